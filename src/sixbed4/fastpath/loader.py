"""Load, configure and attach a fast path; read its counters.

`RouterFastPath.load()` / `PeerFastPath.load()` build (or take from the cache)
and load the programs of router.bpf.c / peer.bpf.c; `configure()` writes what
they must know (prefix, addresses, devices) into their maps; `attach()` hooks
them to the uplink's ingress and the TUN device's egress as tcx links.  The
links live as long as this process holds their file descriptors: close() (or
the process's end, even by SIGKILL) detaches them.  Two daemons on one host
each attach their own links; a program passes what is not its daemon's on to
the next one (TCX_NEXT).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ..core.router import RouterConfig
from . import build, libbpf

MIN_KERNEL = (6, 6)  # tcx links; bpf_skb_adjust_room's decapsulation flags came in 6.3

_ZERO_KEY = bytes(4)
FP_MASQUERADE, FP_TUN_DOWN, FP_LEASED = 1, 2, 4  # enum fp_flags in common.bpf.h
# enum fp_counter in common.bpf.h; the first seven are the cores' counters too (core/stats.py):
# Counters.plus adds them up
COUNTER_NAMES = ("udp_in", "udp_in_bytes", "to_tun", "relayed", "tun_in", "tun_in_bytes", "to_udp",
                 "udp_passed", "tun_passed")


class FastPathError(RuntimeError):
    """The fast path cannot be used here; str() says why, in one line, for the log."""


@dataclass(frozen=True)
class Attachment:
    """What was attached where, for the log."""

    uplink: str
    tun: str
    links: tuple[int, ...]  # the kernel's ids of the tcx links
    inbound: str  # what the uplink's program takes, e.g. "peers -> router"
    outbound: str

    def __str__(self) -> str:
        return (f"tc ingress of {self.uplink} ({self.inbound}) and tc egress of {self.tun} ({self.outbound}), "
                f"tcx links {', '.join(map(str, self.links))}")


def kernel_release() -> tuple[int, int]:
    release = os.uname().release
    try:
        major, minor = release.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def default_ttl() -> int:
    """What a UDP socket sends with unless told otherwise."""
    return int(Path("/proc/sys/net/ipv4/ip_default_ttl").read_text())


class FastPath:
    """Two loaded programs (uplink_in, tun_out) and their maps; attached once attach() ran.

    A subclass names its source and the layout of its `config` map (CONFIG, a
    struct format, and FIELDS, the names of its fields in order).
    """

    SOURCE: Path
    CONFIG: struct.Struct
    FIELDS: tuple[str, ...]
    INBOUND = OUTBOUND = ""

    def __init__(self, obj: libbpf.BpfObject):
        self._obj = obj
        self.uplink_in = obj.program_fd("uplink_in")
        self.tun_out = obj.program_fd("tun_out")
        self._config = obj.map_fd("config")
        self._counters = obj.map_fd("counters")
        self._cpus = libbpf.possible_cpus()
        self._fields: dict[str, object] = {}
        self._links: list[int] = []
        self.attachment: Attachment | None = None

    @classmethod
    def load(cls):
        """Build and load the programs; FastPathError says why not."""
        if kernel_release() < MIN_KERNEL:
            raise FastPathError("kernel %s is too old (needs %d.%d: tcx links)" % (os.uname().release, *MIN_KERNEL))
        try:
            elf = build.build(cls.SOURCE)
        except build.BuildError as exc:
            raise FastPathError(str(exc)) from None
        try:
            return cls(libbpf.BpfObject(elf))
        except libbpf.BpfError as exc:
            if exc.errno == errno.ENOENT and "libbpf" in str(exc):
                raise FastPathError(str(exc)) from None
            if exc.errno == errno.EPERM:
                raise FastPathError("no permission to load BPF programs (needs CAP_BPF, CAP_PERFMON and "
                                    "CAP_NET_ADMIN)") from None
            raise FastPathError(f"the kernel refused the programs: {exc}") from None

    # --- maps -------------------------------------------------------------------

    def _update_config(self, **changes) -> None:
        """Change fields of the programs' configuration (written only when something changed)."""
        wanted = {**self._fields, **changes}
        if wanted != self._fields:
            self._fields = wanted
            libbpf.map_update(self._config, _ZERO_KEY, self.CONFIG.pack(*(wanted[name] for name in self.FIELDS)))

    def following_tun(self, on_tick, tun_is_up):
        """A timer tick that tells the programs whether the TUN device is up, then calls `on_tick`.

        While it is down the programs leave packets for it to the Python path, which
        counts them (tun_down) as it does when the fast path is off.
        """

        def tick(now: float) -> None:
            flags = self._fields["flags"]
            self._update_config(flags=flags & ~FP_TUN_DOWN | (0 if tun_is_up() else FP_TUN_DOWN))
            on_tick(now)

        return tick

    def counters(self) -> dict[str, int]:
        """The programs' counters, summed over the CPUs."""
        size = 8 * len(COUNTER_NAMES)
        raw = libbpf.map_lookup(self._counters, _ZERO_KEY, size * self._cpus) or bytes(size * self._cpus)
        totals = [0] * len(COUNTER_NAMES)
        for cpu in range(self._cpus):
            for index, value in enumerate(struct.unpack_from(f"={len(COUNTER_NAMES)}Q", raw, cpu * size)):
                totals[index] += value
        return dict(zip(COUNTER_NAMES, totals))

    def metrics_collector(self, namespace: str) -> "FastPathCollector":
        return FastPathCollector(namespace, self)

    # --- hooks ------------------------------------------------------------------

    def attach(self, uplink: str, tun: str) -> Attachment:
        """Hook the programs to the devices (by name); FastPathError says what failed."""
        _require_ethernet(uplink)
        try:
            for prog, device, hook in ((self.uplink_in, uplink, libbpf.BPF_TCX_INGRESS),
                                       (self.tun_out, tun, libbpf.BPF_TCX_EGRESS)):
                index = ifindex(device)
                self._links.append(libbpf.attach_tcx(prog, index, hook, f"attaching to {device}"))
        except (libbpf.BpfError, OSError) as exc:
            self.detach()
            if exc.errno == errno.EINVAL:
                raise FastPathError(f"{exc} (the kernel has no tcx hooks?)") from None
            raise FastPathError(str(exc)) from None
        return self._attached_to(uplink, tun)

    def _attached_to(self, uplink: str, tun: str) -> Attachment:
        self.attachment = Attachment(uplink, tun, tuple(libbpf.link_id(fd) for fd in self._links),
                                     self.INBOUND, self.OUTBOUND)
        return self.attachment

    def move_uplink(self, uplink: str) -> Attachment:
        """Take datagrams from another uplink (the route to the router moved there); FastPathError if it cannot."""
        if self.attachment is None or uplink == self.attachment.uplink:
            return self.attachment
        _require_ethernet(uplink)
        try:
            link = libbpf.attach_tcx(self.uplink_in, ifindex(uplink), libbpf.BPF_TCX_INGRESS, f"attaching to {uplink}")
        except (libbpf.BpfError, OSError) as exc:
            raise FastPathError(str(exc)) from None
        os.close(self._links[0])
        self._links[0] = link
        return self._attached_to(uplink, self.attachment.tun)

    def detach(self) -> None:
        while self._links:
            os.close(self._links.pop())
        self.attachment = None

    def test_run(self, program: int, frame: bytes, ifindex: int = 0) -> tuple[int, bytes]:
        """Run a program on one Ethernet frame (BPF_PROG_TEST_RUN): its verdict (signed) and the frame after.

        `ifindex`: the device the frame arrives on (else the loopback device).
        """
        context = bytes(40) + struct.pack("=I", ifindex) if ifindex else None  # struct __sk_buff up to ifindex
        verdict, out = libbpf.test_run(program, frame, context)
        return (verdict - (1 << 32) if verdict >= 1 << 31 else verdict), out

    def close(self) -> None:
        self.detach()
        self._obj.close()


class RouterFastPath(FastPath):
    """router.bpf.c: peers -> router on the uplink, router -> peers on the TUN device."""

    SOURCE = build.ROUTER
    CONFIG = struct.Struct("=8s4s4s4s2sBB8sIII")  # struct fp_config
    FIELDS = ("prefix", "ipv4", "bind", "source", "port", "ttl", "flags", "router_iid", "tun_ifindex",
              "uplink_ifindex", "l2_len")
    INBOUND, OUTBOUND = "peers -> router", "router -> peers"

    def __init__(self, obj: libbpf.BpfObject):
        super().__init__(obj)
        self._host_ipv4s = obj.map_fd("host_ipv4s")
        self._masq_hosts = obj.map_fd("masq_hosts")

    def configure(self, config: RouterConfig, bind_ipv4: bytes, source_ipv4: bytes, tun_ifindex: int,
                  uplink_ifindex: int, ttl: int | None = None, l2_len: int = 0) -> None:
        """What the programs must know of this router.

        `bind_ipv4` is the address the socket is bound to (0.0.0.0: any of the
        host's), `source_ipv4` the source of its datagrams to peers (the bound
        address, or the uplink's); `ttl` what the socket sends with (default: the sysctl);
        `l2_len` 14 only for BPF_PROG_TEST_RUN (which puts an Ethernet header
        in front of what would reach the TUN device's egress bare).
        """
        for key in libbpf.map_keys(self._masq_hosts, 16):
            libbpf.map_delete(self._masq_hosts, key)
        for rule in config.masquerade:
            libbpf.map_update(self._masq_hosts, rule.host, b"\x01")
        self._update_config(prefix=config.prefix, ipv4=config.ipv4, bind=bind_ipv4, source=source_ipv4,
                            port=struct.pack("!H", config.port), ttl=default_ttl() if ttl is None else ttl,
                            flags=FP_MASQUERADE if config.masquerade else 0, router_iid=config.address[8:],
                            tun_ifindex=tun_ifindex, uplink_ifindex=uplink_ifindex, l2_len=l2_len)

    def set_host_ipv4s(self, addresses) -> None:
        """The host's own IPv4 addresses (packed, 4 bytes each): never peer endpoints."""
        wanted = {bytes(a) for a in addresses}
        present = set(libbpf.map_keys(self._host_ipv4s, 4))
        for address in wanted - present:
            libbpf.map_update(self._host_ipv4s, address, b"\x01")
        for address in present - wanted:
            libbpf.map_delete(self._host_ipv4s, address)


class PeerFastPath(FastPath):
    """peer.bpf.c: router -> peer on the uplink, peer -> router on the TUN device.

    Until `set_lease()` gave a /114 and `set_route()` the socket's address as
    it leaves the host, the programs hand everything to the Python peer.
    """

    SOURCE = build.PEER
    CONFIG = struct.Struct("=16s4s4s2s2sBB2xIII")  # struct peer_config
    FIELDS = ("prefix", "router", "local", "router_port", "local_port", "ttl", "flags", "tun_ifindex",
              "uplink_ifindex", "l2_len")
    INBOUND, OUTBOUND = "router -> peer", "peer -> router"

    def configure(self, router: tuple[bytes, int], local_port: int, tun_ifindex: int, ttl: int | None = None,
                  l2_len: int = 0) -> None:
        """The router's IPv4 address and port, the socket's port, the TUN device (`l2_len`: see RouterFastPath)."""
        self._update_config(prefix=bytes(16), router=router[0], local=bytes(4), router_port=struct.pack("!H", router[1]),
                            local_port=struct.pack("!H", local_port), ttl=default_ttl() if ttl is None else ttl,
                            flags=0, tun_ifindex=tun_ifindex, uplink_ifindex=0, l2_len=l2_len)

    def set_lease(self, prefix114: bytes | None) -> None:
        """The /114 the router gave (lanid 0), or None: no lease, everything to the Python peer."""
        flags = self._fields["flags"] & ~FP_LEASED
        self._update_config(prefix=prefix114 or bytes(16), flags=flags | (FP_LEASED if prefix114 else 0))

    def set_route(self, local_ipv4: bytes | None, uplink_ifindex: int) -> None:
        """The address the socket's datagrams to the router leave from, and the interface (None: no route)."""
        self._update_config(local=local_ipv4 or bytes(4), uplink_ifindex=uplink_ifindex if local_ipv4 else 0)


def _require_ethernet(uplink: str) -> None:
    """The programs read Ethernet frames on the uplink (ARPHRD_ETHER); FastPathError otherwise."""
    try:
        kind = int(Path(f"/sys/class/net/{uplink}/type").read_text())
    except (OSError, ValueError):
        raise FastPathError(f"no device {uplink}") from None
    if kind != 1:
        raise FastPathError(f"uplink {uplink} is not an Ethernet device (ARPHRD {kind})")


def ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise FastPathError(f"no device {name}") from None


class FastPathCollector:
    """`<namespace>_fastpath_total{event=...}`: what the kernel took, and what it left to the Python path.

    The daemon's own counters (udp_in, to_tun, ...) already include the
    kernel's; these say how much of them it was.
    """

    reasons = ()  # it drops nothing: every drop is the Python daemon's, under its reason
    HELP = "packets the kernel fast path handled (udp_in, to_tun, relayed, tun_in, to_udp, ...) or left to " \
           "the Python path (udp_passed, tun_passed)"

    def __init__(self, namespace: str, fast: FastPath):
        self.namespace, self.fast = namespace, fast

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(f"{self.namespace}_fastpath", self.HELP, labels=["event"])
        for name, value in self.fast.counters().items():
            family.add_metric([name], value)
        yield family
