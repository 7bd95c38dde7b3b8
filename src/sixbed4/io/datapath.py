"""The packet pump: UDP socket <-> core <-> TUN device, in batches.

One epoll wait covers a batch: each ready side is drained (up to BATCH packets,
then the other side gets its turn) without a poll per packet.  Receive buffers
are allocated once; the core edits packets in place and says where they go.
Shared by the router and the peer: both cores speak the same action tuples.

Python pays per system call, so sends use UDP GSO: one send carries a run of
same-size packets for the same destination (the kernel splits it).  TUN
packets are read back to back into one buffer so that such a run is already
contiguous.  Without GSO in the kernel, one datagram per call.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import struct
import time
from typing import Callable, Protocol

from ..core.router import DROP, REPLY, SEND, TUN
from ..core.stats import Counters
from .tun import Tun

log = logging.getLogger(__name__)

BATCH = 256  # packets per turn of one side
RECV_BUFFER = 65536  # any UDP datagram fits: over-long ones are seen whole, and dropped
SOL_UDP, UDP_SEGMENT = 17, 103
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS is 64 or more
GSO_MAX_BYTES = 65000  # below the 65507-byte UDP payload limit
_TUN_FATAL_OK = (errno.EINVAL, errno.ENOBUFS)  # one bad packet, not a dead device


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
        self._udp_view = memoryview(self._udp_buffer)
        # Room for a full GSO run plus one maximal packet read behind it.
        self._tun_buffer = bytearray(GSO_MAX_BYTES + RECV_BUFFER)
        self._tun_view = memoryview(self._tun_buffer)
        self.gso = True  # cleared when the kernel refuses UDP_SEGMENT
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stopping = False

    # --- sending ----------------------------------------------------------------

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
        except OSError as exc:
            self._failed(kind == TUN, exc)

    def _failed(self, to_tun: bool, exc: OSError, count: int = 1) -> None:
        """Count the lost packets; a TUN device that fails for good ends the datapath."""
        self.core.counters.drops["send_error"] += count
        if to_tun and exc.errno not in _TUN_FATAL_OK and not isinstance(exc, (BlockingIOError, InterruptedError)):
            raise DatapathError(f"writing to {self.tun.name}: {exc.strerror}") from None

    def _send_run(self, size: int, count: int, address) -> None:
        """Send `count` packets of `size` bytes lying back to back at the buffer's start, in one GSO send if possible."""
        view = self._tun_view
        if count == 1:
            try:
                self.sock.sendto(view[:size], address)
            except OSError as exc:
                self._failed(False, exc)
            return
        if self.gso:
            try:
                self.sock.sendmsg([view[: size * count]],
                                  [(SOL_UDP, UDP_SEGMENT, struct.pack("H", size))], 0, address)
                return
            except (BlockingIOError, InterruptedError) as exc:
                self._failed(False, exc, count)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self._failed(False, exc, count)
                    return
                log.info("UDP GSO unavailable (%s): sending one datagram per packet", exc.strerror)
                self.gso = False
        for at in range(0, size * count, size):
            try:
                self.sock.sendto(view[at : at + size], address)
            except OSError as exc:
                self._failed(False, exc)

    # --- the two directions --------------------------------------------------

    def drain_udp(self) -> bool:
        """Handle up to BATCH datagrams; True if more may be waiting."""
        recv = self.sock.recvfrom_into
        buffer = self._udp_buffer
        view = self._udp_view
        from_udp = self.core.from_udp
        emit = self._emit
        write, tun_fd = os.write, self.tun.fd
        now = self.clock()
        for _ in range(BATCH):
            try:
                n, origin = recv(buffer)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # e.g. a queued ICMP error for an earlier send
                continue
            packet = view[:n]
            action = from_udp(packet, origin, now)
            if action[0] == TUN:  # the common case, without a call
                try:
                    write(tun_fd, packet)
                except OSError as exc:
                    self._failed(True, exc)
            elif action[0] != DROP:
                emit(action, packet)
        return True

    def drain_tun(self) -> bool:
        """Handle up to BATCH packets from the kernel; True if more may be waiting.

        Packets to send are read back to back; a run of same-size packets for the
        same destination goes out as one GSO send when the run breaks or fills.
        """
        readinto = self.tun.file.readinto
        view = self._tun_view
        from_tun = self.core.from_tun
        at = 0  # where the next packet is read
        run_size = run_count = 0  # the run being collected lies at 0 .. at
        run_address = None
        more = True
        for _ in range(BATCH):
            try:
                n = readinto(view[at : at + RECV_BUFFER])
            except InterruptedError:
                continue
            except OSError as exc:
                raise DatapathError(f"reading from {self.tun.name}: {exc.strerror}") from None
            if n is None:
                more = False
                break
            if n == 0:
                raise DatapathError(f"{self.tun.name} was closed")
            packet = view[at : at + n]
            action = from_tun(packet)
            kind, data, address = action
            if kind == SEND and data is None:
                if run_count and (n != run_size or address != run_address):
                    self._send_run(run_size, run_count, run_address)
                    run_count = 0
                    view[0:n] = packet  # runs start at 0, so a full one always leaves room to read
                    at = 0
                if not run_count:
                    run_size, run_address = n, address
                run_count += 1
                at += n
                if run_count >= GSO_MAX_SEGMENTS or at + n > GSO_MAX_BYTES:
                    self._send_run(run_size, run_count, run_address)
                    run_count = at = 0
            elif kind != DROP:
                if run_count:
                    self._send_run(run_size, run_count, run_address)
                    run_count = at = 0
                self._emit(action, packet)
        if run_count:
            self._send_run(run_size, run_count, run_address)
        return more

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
