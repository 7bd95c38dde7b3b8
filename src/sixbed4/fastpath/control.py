"""`--fast-path {auto,on,off}`: start the fast path for the router daemon, or say why not."""

from __future__ import annotations

import logging
import socket
from typing import Callable, Iterable

from ..core import addr
from ..core.router import RouterConfig
from ..io import netlink
from .loader import FastPath, FastPathError

__all__ = ["MODES", "FastPathError", "start"]

log = logging.getLogger("6bed4router")

MODES = ("auto", "on", "off")


def start(mode: str, config: RouterConfig, bind: tuple[str, int], tun: str, uplink: str | None,
          host_ipv4s: Callable[[], Iterable[bytes]]) -> FastPath | None:
    """The attached fast path, or None (mode off, or auto and it cannot be used: logged).

    `host_ipv4s()` gives the host's IPv4 addresses, which the programs know
    before they are attached (the daemon keeps them current afterwards).
    Raises FastPathError when mode is "on" and it cannot be used.
    """
    if mode == "off":
        return None
    try:
        fast = _attach(config, bind, tun, uplink, host_ipv4s)
    except FastPathError as exc:
        if mode == "on":
            raise
        log.info("fast path not used: %s; all packets take the Python path", exc)
        return None
    log.info("fast path attached: %s", fast.attachment)
    return fast


def _attach(config: RouterConfig, bind: tuple[str, int], tun: str, uplink: str | None,
            host_ipv4s: Callable[[], Iterable[bytes]]) -> FastPath:
    bind_ipv4 = addr.parse_ipv4(bind[0])
    if bind_ipv4[0] == 127:
        raise FastPathError(f"the socket is bound to {bind[0]} (-x): datagrams come through firewall rules")
    if uplink is None:
        raise FastPathError(f"no interface has or routes {addr.format_ipv4(config.ipv4)}: give --uplink")
    source = bind_ipv4 if any(bind_ipv4) else _uplink_ipv4(uplink)
    fast = FastPath.load()
    try:
        fast.configure(config, bind_ipv4, source, _index(tun), _index(uplink))
        fast.set_host_ipv4s(host_ipv4s())
        fast.attach(uplink, tun)
    except OSError as exc:
        fast.close()
        raise FastPathError(str(exc)) from None
    except BaseException:
        fast.close()
        raise
    return fast


def _uplink_ipv4(uplink: str) -> bytes:
    """The socket bound to 0.0.0.0 sends from the uplink's address (the first one, as the kernel picks)."""
    addresses = netlink.ipv4_addresses(uplink)
    if not addresses:
        raise FastPathError(f"uplink {uplink} has no IPv4 address to send from")
    return addresses[0]


def _index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise FastPathError(f"no device {name}") from None
