"""The proxy Neighbor Discovery responder's IO: a packet socket on the uplink.

- An AF_PACKET socket bound to the uplink for ETH_P_IPV6, with a classic BPF
  filter that passes only ICMPv6 Neighbor Solicitations and Advertisements
  without extension headers, so the process never wakes for other traffic
  (the Advertisements tell which addresses other hosts own).
- NS for many addresses go to many solicited-node multicast MACs: the socket
  joins PACKET_MR_ALLMULTI.  That membership belongs to the socket, so the
  kernel drops it when the socket closes, also after SIGKILL: nothing to restore.
- The answer is a whole Ethernet frame from the uplink's MAC.
- The host's own addresses (in the /64 but not on the uplink) are re-read from
  /proc/net/if_inet6 every few seconds, so addresses that `6bed4 host-setup`
  moves, or an operator adds, are answered without a restart.

No kernel proxy entries are used (`ip -6 neigh add proxy` takes one address at
a time; a /64 cannot be listed).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import select
import socket
import struct
import threading
import time

from pyroute2 import IPRoute

from ..core import proxynd
from ..core.stats import Counters
from .metrics import CountersCollector

log = logging.getLogger("6bed4.proxy-nd")

ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
PACKET_OTHERHOST = 3
REFRESH_SECONDS = 5.0

# ldh [12]; jeq #0x86dd; ldb [20]; jeq #58; ldb [54]; jeq #135 or #136; ret #65535; ret #0
_BPF = (
    (0x28, 0, 0, 12),
    (0x15, 0, 6, ETH_P_IPV6),
    (0x30, 0, 0, 20),
    (0x15, 0, 4, 58),
    (0x30, 0, 0, 54),
    (0x15, 1, 0, 135),
    (0x15, 0, 1, 136),
    (0x06, 0, 0, 0xFFFF),
    (0x06, 0, 0, 0),
)


class ProxyError(OSError):
    """The responder cannot run; str() says why in one line."""


def _attach_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *insn) for insn in _BPF)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_BPF), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def read_if_inet6(path: str = "/proc/net/if_inet6") -> list[tuple[bytes, str, int]]:
    """(address, interface, scope) of every IPv6 address of this network namespace."""
    found = []
    with open(path) as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 6:
                found.append((bytes.fromhex(fields[0]), fields[5], int(fields[3], 16)))
    return found


class ProxyResponder:
    """Answer NS on `uplink` for the 6bed4 addresses and the host's moved addresses in `prefix`."""

    def __init__(self, uplink: str, prefix: bytes, local: tuple[bytes, ...] = (), counters: Counters | None = None):
        self.uplink = uplink
        self.prefix = prefix
        self.local = frozenset(local)
        self.counters = counters or Counters()
        self.stop_event = threading.Event()
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=uplink)
            if not found:
                raise ProxyError(errno.ENODEV, f"no interface named {uplink}")
            self.index = found[0]
            link = ipr.get_links(self.index)[0]
        mac = link.get_attr("IFLA_ADDRESS")
        if not mac or len(proxynd.parse_mac(mac)) != 6 or proxynd.parse_mac(mac) == bytes(6):
            raise ProxyError(errno.EINVAL, f"{uplink} has no Ethernet address: proxy ND needs an Ethernet uplink")
        self.mac = proxynd.parse_mac(mac)
        self.core = proxynd.ProxyCore(self._config(), self.counters)
        self.next_refresh = time.monotonic() + REFRESH_SECONDS

    def _config(self) -> proxynd.ProxyConfig:
        own, on_uplink, link_local = set(self.local), set(), None
        try:
            entries = read_if_inet6()
        except OSError:
            entries = []
        for address, ifname, scope in entries:
            if ifname == self.uplink:
                if scope == 0x20 and link_local is None:
                    link_local = address
                if address[:8] == self.prefix:
                    on_uplink.add(address)
            elif address[:8] == self.prefix and scope == 0:
                own.add(address)
        return proxynd.ProxyConfig(self.prefix, self.mac, link_local, frozenset(own - on_uplink),
                                   frozenset(on_uplink))

    def open(self) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing until bound
        except PermissionError:
            raise ProxyError(errno.EPERM, "a packet socket needs root or CAP_NET_RAW") from None
        try:
            _attach_filter(sock)
            sock.bind((self.uplink, ETH_P_IPV6))
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # kernels before 4.20: outgoing frames are skipped by their packet type below
            mreq = struct.pack("iHH8s", self.index, PACKET_MR_ALLMULTI, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ProxyError(exc.errno or errno.EIO, f"packet socket on {self.uplink}: {exc.strerror}") from None
        self.sock = sock
        log.info("proxy ND on %s (%s) for %s/64: 6bed4 addresses and %d own address(es) moved off the uplink",
                 self.uplink, ":".join(f"{b:02x}" for b in self.mac),
                 socket.inet_ntop(socket.AF_INET6, self.prefix + bytes(8)), len(self.core.config.own))

    def refresh(self, now: float) -> None:
        if now >= self.next_refresh:
            self.core.config = self._config()
            self.next_refresh = now + REFRESH_SECONDS

    def poll_once(self, timeout: float = 1.0) -> int:
        """Wait up to `timeout` for NS and answer them; returns the number of frames handled."""
        assert self.sock is not None
        ready, _, _ = select.select([self.sock], [], [], timeout)
        now = time.monotonic()
        self.refresh(now)
        handled = 0
        if not ready:
            return 0
        while handled < 256:
            try:
                frame, address = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            except OSError as exc:
                log.debug("receive on %s: %s", self.uplink, exc)
                break
            handled += 1
            if address[2] in (PACKET_OUTGOING, PACKET_OTHERHOST):
                if address[2] == PACKET_OTHERHOST:
                    self.counters.drop("proxy_other_host")
                continue
            reply = self.core.handle_frame(frame, now)
            if reply is None:
                continue
            try:
                self.sock.send(reply)
            except OSError:
                self.counters.drop("send_error")
        return handled

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll_once(1.0)

    def start_thread(self) -> threading.Thread:
        """Run the responder in a daemon thread (inside the router)."""
        self.thread = threading.Thread(target=self._thread_main, name="proxy-nd", daemon=True)
        self.thread.start()
        return self.thread

    def _thread_main(self) -> None:
        try:
            self.run()
        except Exception:  # noqa: BLE001 - the router keeps running; say why the proxy stopped
            log.exception("proxy ND responder stopped")

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(3)

    def close(self) -> None:
        self.stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def summary(self) -> str:
        counts = {event: getattr(self.counters, event) for event in proxynd.EVENTS}
        counts.update((reason, self.counters.drops[reason]) for reason in proxynd.REASONS)
        return " ".join(f"{name}={value}" for name, value in counts.items() if value) or "none"

    def metrics_collector(self) -> CountersCollector:
        return CountersCollector("sixbed4_proxynd", self.counters, events=proxynd.EVENTS, reasons=proxynd.REASONS)
