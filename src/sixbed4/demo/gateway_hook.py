"""The demo gateway's 6bed4peer hook: hand the first offered address to the home LAN.

    python -m sixbed4.demo.gateway_hook OFFER_FILE PID VERB [ARGS...]

6bed4peer calls its hook (-x) with `PID add-range-offer START END` once it
holds a /114; START (lanid 2) is the first address it may give away.  This hook
routes START to the LAN interface `lan0` and writes it to OFFER_FILE, where the
demo picks it up to configure the laptop, as a DHCPv6 server would.  On
`del-offers` it removes the route again.  Addresses change only through pyroute2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyroute2 import IPRoute

LAN = "lan0"
AF_INET6 = 10


def main(argv: list[str]) -> int:
    offer_file, _pid, verb, *args = argv
    with IPRoute() as ipr:
        lan = ipr.link_lookup(ifname=LAN)[0]
        if verb == "add-range-offer":
            ipr.route("replace", family=AF_INET6, dst=args[0], dst_len=128, oif=lan)
            Path(offer_file).write_text(args[0] + "\n")
        elif verb == "del-offers":
            for route in ipr.get_routes(family=AF_INET6, oif=lan):
                if route["dst_len"] == 128:
                    ipr.route("del", family=AF_INET6, dst=route.get_attr("RTA_DST"), dst_len=128, oif=lan)
            Path(offer_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
