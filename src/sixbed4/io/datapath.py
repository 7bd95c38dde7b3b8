"""The packet pump: UDP socket <-> core <-> TUN device, in batches.

One epoll wait covers a batch: each ready side is drained (up to BATCH packets,
then the other side gets its turn) without a poll per packet.  Receive buffers
are allocated once; the core edits packets in place and says where they go.
Shared by the router and the peer: both cores speak the same action tuples.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from typing import Callable, Protocol

from ..core.router import DROP, REPLY, SEND, TUN
from ..core.stats import Counters
from .tun import Tun

log = logging.getLogger(__name__)

BATCH = 256
RECV_BUFFER = 65536  # any UDP datagram fits: over-long ones are seen whole, and dropped


class Core(Protocol):
    counters: Counters

    def from_udp(self, packet, origin: tuple[str, int], now: float): ...

    def from_tun(self, packet): ...


class DatapathError(RuntimeError):
    """The TUN device or socket failed for good; the daemon must exit non-zero."""


class Datapath:
    def __init__(self, sock: socket.socket, tun: Tun, core: Core, clock: Callable[[], float] = time.monotonic):
        self.sock = sock
        self.tun = tun
        self.core = core
        self.clock = clock
        self._udp_buffer = bytearray(RECV_BUFFER)
        self._tun_buffer = bytearray(RECV_BUFFER)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stopping = False

    # --- the two directions --------------------------------------------------

    def _emit(self, action, packet) -> None:
        kind, data, address = action
        if kind == DROP:
            return
        try:
            if kind == TUN:
                os.write(self.tun.fd, packet)
            elif kind == SEND:
                self.sock.sendto(packet, address)
            elif kind == REPLY:
                self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self.core.counters.drop("send_error")
        except OSError as exc:
            self.core.counters.drop("send_error")
            if kind == TUN and exc.errno not in (22, 105):  # EINVAL, ENOBUFS: one bad packet
                raise DatapathError(f"writing to {self.tun.name}: {exc.strerror}") from None

    def drain_udp(self) -> bool:
        """Handle up to BATCH datagrams; True if more may be waiting."""
        recv = self.sock.recvfrom_into
        view = memoryview(self._udp_buffer)
        from_udp = self.core.from_udp
        emit = self._emit
        now = self.clock()
        for _ in range(BATCH):
            try:
                n, origin = recv(self._udp_buffer)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # e.g. a queued ICMP error for an earlier send
                continue
            packet = view[:n]
            emit(from_udp(packet, origin, now), packet)
        return True

    def drain_tun(self) -> bool:
        """Handle up to BATCH packets from the kernel; True if more may be waiting."""
        readinto = self.tun.file.readinto
        view = memoryview(self._tun_buffer)
        from_tun = self.core.from_tun
        emit = self._emit
        for _ in range(BATCH):
            try:
                n = readinto(self._tun_buffer)
            except InterruptedError:
                continue
            except OSError as exc:
                raise DatapathError(f"reading from {self.tun.name}: {exc.strerror}") from None
            if n is None:
                return False
            if n == 0:
                raise DatapathError(f"{self.tun.name} was closed")
            packet = view[:n]
            emit(from_tun(packet), packet)
        return True

    # --- the loop -------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler or another thread."""
        self.stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def run(self, on_tick: Callable[[float], None] | None = None, tick: float = 1.0) -> None:
        """Pump packets until stop(); call on_tick(now) about every `tick` seconds."""
        udp_fd, tun_fd, wake_fd = self.sock.fileno(), self.tun.fd, self._wake_r.fileno()
        poller = select.epoll()
        poller.register(udp_fd, select.EPOLLIN)
        poller.register(tun_fd, select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP)
        poller.register(wake_fd, select.EPOLLIN)
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        next_tick = self.clock() + tick
        busy = False
        try:
            while not self.stopping:
                timeout = 0 if busy else max(0.0, next_tick - self.clock())
                busy = False
                for fd, _events in poller.poll(timeout):
                    if fd == udp_fd:
                        busy |= self.drain_udp()
                    elif fd == tun_fd:
                        busy |= self.drain_tun()
                    else:
                        self._clear_wakeups()
                now = self.clock()
                if now >= next_tick:
                    next_tick = now + tick
                    if on_tick is not None:
                        on_tick(now)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            poller.close()

    def _clear_wakeups(self) -> None:
        try:
            while self._wake_r.recv(256):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()
