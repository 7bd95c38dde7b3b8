"""The IPv4 addresses of this host, kept current from netlink.

The router must never send to its own host (a forged address would otherwise
make it relay to itself, or deliver a datagram from the router into a local
service that trusts local traffic).  Which addresses those are changes while it
runs, so a thread listens to the kernel's address events and hands the whole
new set to a callback each time: local and broadcast addresses of every
interface in this network namespace.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Callable

from pyroute2 import IPRoute

RTMGRP_IPV4_IFADDR = 0x10  # rtnetlink.h: the multicast group of IPv4 address changes

log = logging.getLogger(__name__)


def host_ipv4s() -> frozenset[bytes]:
    """Every IPv4 address (local and broadcast) of every interface, 4 bytes each."""
    found = set()
    with IPRoute() as ipr:
        for message in ipr.get_addr(family=socket.AF_INET):
            for name in ("IFA_LOCAL", "IFA_ADDRESS", "IFA_BROADCAST"):
                value = message.get_attr(name)
                if value:
                    found.add(socket.inet_aton(value))
    return frozenset(found)


class HostIPv4Watch:
    """Call `on_change(addresses)` now and whenever an IPv4 address comes or goes."""

    def __init__(self, on_change: Callable[[frozenset[bytes]], None]):
        self.on_change = on_change
        # a plain netlink socket: only woken by changes, which are read and dropped
        self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # subscribe before the first dump: no change can fall between the two
        self._events.bind((0, RTMGRP_IPV4_IFADDR))
        self._events.setblocking(False)
        self.on_change(host_ipv4s())
        self._thread = threading.Thread(target=self._run, name="host-ipv4", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._events, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                self._drain()
                self.on_change(host_ipv4s())
        except Exception:  # noqa: BLE001 - say so: the router would otherwise miss new addresses silently
            log.exception("watching the host's IPv4 addresses failed; the set known now stays in force")

    def _drain(self) -> None:
        """Read and drop the queued events: what changed does not matter, the whole set is read again."""
        while True:
            try:
                self._events.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: events were lost, which the new dump makes good
                continue

    def close(self) -> None:
        if self._thread is not None:
            self._wake_w.send(b"\0")
            self._thread.join(2)
        self._events.close()
        self._wake_r.close()
        self._wake_w.close()
