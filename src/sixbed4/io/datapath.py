"""The packet pump: UDP socket <-> core <-> TUN device, in batches.

One epoll wait covers a batch: each ready side is drained (up to BATCH packets,
then the other side gets its turn) without a poll per packet.  Receive buffers
are allocated once; the core edits packets in place and says where they go.
Shared by the router and the peer: both cores speak the same action tuples.

Python and the kernel pay per system call and per packet handed over, so
both directions batch: datagrams arrive by the receiver's worth (recvmmsg);
a run of one UDP flow or TCP connection goes to the TUN as one GSO packet
(TunWriter); a run of
same-size packets from the TUN for one peer leaves in one UDP GSO send
(GsoSender).  Where the kernel has no GSO, one packet per call.

Batches must not cost a lone packet its latency: the first packet of a side
that was idle is decided and sent at once, before the data path looks for
more (lone_from_udp, lone_from_tun); a side that is still ready at the next
look is drained in batches.  Under load, only the first packet of a burst
goes alone.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import select
import signal
import socket
import struct
import time
from typing import Callable, Protocol

from ..core.router import DROP, REPLY, SEND, TUN
from ..core.stats import Counters
from .tun import VNET_HEADER, Tun, TunWriter
from .udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, BatchReceiver, GsoSender


BATCH = 256  # packets per turn of one side
SCHEDULER_SLICE_NS = 100_000  # the shortest the kernel takes
TUN_SLOT = VNET_HEADER + 2048  # longer packets (the TUN's MTU is 1280) are cut, and dropped as too long
TUN_RING = GSO_MAX_SEGMENTS + 1
VERDICT_KEY = 41  # see Core
_TUN_FATAL_OK = (errno.EINVAL, errno.ENOBUFS)  # one bad packet, not a dead device
# struct sched_attr (size, policy, flags, nice, priority, runtime, deadline, period) and
# sched_setattr(2), which the os module does not wrap.
_SCHED_ATTR = struct.Struct("=IIQiIQQQ")
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True)

log = logging.getLogger(__name__)


class Core(Protocol):
    """What the data path needs of a core (RouterCore, PeerCore).

    from_udp's TUN verdict must depend only on the datagram's length, its first
    VERDICT_KEY bytes (the IPv6 header and the first byte after it), its origin,
    and on state that only datagrams with another verdict (or on_tick) change;
    likewise from_tun's SEND verdict on the packet's length and first
    VERDICT_KEY bytes as from_tun left them (a packet it rewrote does not match
    the next one as read).  The data path relies on that: a packet that repeats
    the run's first in all of these within a batch gets the same verdict
    without asking, and is counted with counters.udp_to_tun() / tun_to_udp().
    """

    counters: Counters

    def from_udp(self, packet, origin: tuple[str, int], now: float): ...

    def from_tun(self, packet): ...


def short_scheduler_slice(slice_ns: int = SCHEDULER_SLICE_NS) -> bool:
    """Ask the scheduler (EEVDF, Linux 6.12+) for short slices for this thread; True if granted.

    A woken task with a short slice gets an early deadline, so it runs soon
    instead of waiting out a CPU-bound neighbour's slice; its share of the CPU
    stays the same.  Policy and nice value are kept; a real-time or batch
    policy set by the operator is left alone; older kernels refuse (EINVAL),
    and then nothing changes.  Set at start: threads made later (metrics) keep the default.
    """
    if _SYS_SCHED_SETATTR is None or os.sched_getscheduler(0) != os.SCHED_OTHER:
        return False
    attr = _SCHED_ATTR.pack(_SCHED_ATTR.size, os.SCHED_OTHER, 0, os.getpriority(os.PRIO_PROCESS, 0), 0, slice_ns, 0, 0)
    if _libc.syscall(_SYS_SCHED_SETATTR, 0, attr, 0) == 0:
        return True
    log.debug("no short scheduler slice: %s", os.strerror(ctypes.get_errno()))
    return False


class DatapathError(RuntimeError):
    """The TUN device or socket failed for good; the daemon must exit non-zero."""


class Datapath:
    def __init__(self, sock: socket.socket, tun: Tun, core: Core, clock: Callable[[], float] = time.monotonic):
        self.sock = sock
        self.tun = tun
        self.core = core
        self.clock = clock
        self._receiver = BatchReceiver(sock, headroom=VNET_HEADER)
        self._tun_writer = TunWriter(tun, self._receiver.buffer, lambda exc, count: self._failed(True, exc, count))
        self._udp_sender = GsoSender(sock, lambda exc, count: self._failed(False, exc, count))
        self.tun_file = open(tun.fd, "r+b", buffering=0, closefd=False)  # readinto() returns None on EAGAIN
        # A ring of slots, one more than the longest run: a run is sent from where it was
        # read, and the next read never lands in it.  Small, so that it stays in the cache.
        self._tun_buffer = bytearray(TUN_RING * TUN_SLOT)
        tun_view = memoryview(self._tun_buffer)
        self._tun_reads = [tun_view[at : at + TUN_SLOT] for at in range(0, TUN_RING * TUN_SLOT, TUN_SLOT)]
        self._tun_packets = [read[VNET_HEADER:] for read in self._tun_reads]
        self._tun_offsets = [at + VNET_HEADER for at in range(0, TUN_RING * TUN_SLOT, TUN_SLOT)]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stopping = False
        self.turned = clock()  # when run()'s loop last turned (core.watchdog: stalled or not)

    # --- sending ----------------------------------------------------------------

    def _emit(self, action, packet) -> None:
        """Send a SEND or REPLY action's datagram (TUN actions are collected by drain_udp)."""
        kind, data, address = action
        try:
            if kind == SEND:
                self.sock.sendto(packet, address)
            elif kind == REPLY:
                self.sock.sendto(data, address)
        except OSError as exc:
            self._failed(False, exc)

    def _failed(self, to_tun: bool, exc: OSError, count: int = 1) -> None:
        """Count the lost packets; a TUN device that fails for good ends the datapath.

        A device set down (`ip link set DEV down`) refuses writes with EIO until it
        is up again: its packets are counted as tun_down, everything else goes on
        (the daemon's LinkWatch logs it and restores the device's configuration).
        Reads from it return what was queued before, then nothing (EAGAIN, no
        EPOLLERR): no busy loop.
        """
        if to_tun and exc.errno == errno.EIO:
            self.core.counters.drops["tun_down"] += count
            return
        self.core.counters.drops["send_error"] += count
        if to_tun and exc.errno not in _TUN_FATAL_OK and not isinstance(exc, (BlockingIOError, InterruptedError)):
            raise DatapathError(f"writing to {self.tun.name}: {exc.strerror}") from None

    # --- the two directions --------------------------------------------------

    def lone_from_udp(self) -> bool:
        """One datagram, decided and written at once; False if none was waiting.

        On a side that was idle the first datagram is most often alone (a ping,
        a request): it goes to the TUN now, not after a look for more.
        recvfrom_into and a plain write are less code than a recvmmsg batch, and
        code that runs after a wait is cold: it costs several times what it
        costs under load (bench/README.md, "Latency").
        """
        receiver = self._receiver
        try:
            n, origin = self.sock.recvfrom_into(receiver.packets[0])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # e.g. a queued ICMP error for an earlier send
            return True
        packet = receiver.packets[0][:n]
        action = self.core.from_udp(packet, origin, self.clock())
        if action[0] == TUN:
            self._tun_writer.write_one(receiver.offsets[0], n)
        elif action[0] != DROP:
            self._emit(action, packet)
        return True

    def lone_from_tun(self) -> bool:
        """One packet from the TUN, decided and sent at once; False if none was waiting.

        As lone_from_udp: the packet leaves before the read that looks for more.
        """
        read = self._tun_reads[0]
        try:
            n = self.tun_file.readinto(read)
        except InterruptedError:
            return True
        except OSError as exc:
            raise DatapathError(f"reading from {self.tun.name}: {exc.strerror}") from None
        if n is None:
            return False
        if n < VNET_HEADER:
            raise DatapathError(f"{self.tun.name} was closed")
        packet = self._tun_packets[0][: n - VNET_HEADER]
        action = self.core.from_tun(packet)
        if action[0] != DROP:
            self._emit(action, packet)
        return True

    def drain_udp(self) -> bool:
        """Handle up to BATCH datagrams, a receiver's worth per system call; True if more may be waiting."""
        receiver = self._receiver
        receive, packets, offsets, slots = receiver.receive, receiver.packets, receiver.offsets, receiver.slots
        from_udp = self.core.from_udp
        emit = self._emit
        write_tun = self._tun_writer.write
        buffer = receiver.buffer
        count_repeats = self.core.counters.udp_to_tun
        now = self.clock()
        for _ in range(0, BATCH, slots):
            try:
                lengths, origins = receive()
            except OSError:  # e.g. a queued ICMP error for an earlier send
                continue
            # Neighbours for the TUN of the same size from the same peer may be one
            # flow: collected, and written together (origins of one peer are one object).
            # One that repeats the run's first datagram in what the verdict depends on
            # (see Core) joins without asking the core.
            run: list[int] = []
            run_size = 0
            run_origin = None
            run_key = b""
            repeats = 0
            for slot, n in enumerate(lengths):
                origin = origins[slot]
                offset = offsets[slot]
                if n == run_size and origin is run_origin and buffer.startswith(run_key, offset):
                    run.append(offset)
                    repeats += 1
                    continue
                packet = packets[slot][:n]
                action = from_udp(packet, origin, now)
                if repeats:
                    count_repeats(repeats, run_size)
                    repeats = 0
                if action[0] == TUN:
                    if n == run_size and origin is run_origin:
                        run.append(offset)  # same peer and size, another flow
                        continue
                    if run:
                        write_tun(run_size, run)
                    run, run_size, run_origin = [offset], n, origin
                    run_key = bytes(buffer[offset : offset + VERDICT_KEY])
                else:
                    run_origin = None  # the core's state may have changed: no repeats across this
                    if action[0] != DROP:
                        emit(action, packet)
            if repeats:
                count_repeats(repeats, run_size)
            if run:
                write_tun(run_size, run)
            if len(lengths) < slots:
                return False  # the socket is drained
        return True

    def drain_tun(self) -> bool:
        """Handle up to BATCH packets from the kernel; True if more may be waiting.

        Each packet is read into the next slot of a ring.  Neighbours of the same size with
        the same SEND action (the cores return one action object per
        destination) form a run that leaves in one GSO send.
        """
        readinto, reads, packets = self.tun_file.readinto, self._tun_reads, self._tun_packets
        buffer, offsets = self._tun_buffer, self._tun_offsets
        from_tun = self.core.from_tun
        count_repeats = self.core.counters.tun_to_udp
        send_run = self._udp_sender.send_run
        run: list = []  # packets of the run being collected
        run_action = None
        run_size = run_limit = 0
        run_key = b""  # the run's first packet as from_tun left it (see Core)
        repeats = 0
        more = True
        slot = 0  # advanced only past a slot that holds a packet
        for _ in range(BATCH):
            try:
                n = readinto(reads[slot])
            except InterruptedError:
                continue
            except OSError as exc:
                raise DatapathError(f"reading from {self.tun.name}: {exc.strerror}") from None
            if n is None:
                more = False
                break
            size = n - VNET_HEADER
            if size < 0:
                raise DatapathError(f"{self.tun.name} was closed")
            packet = packets[slot][:size]
            offset = offsets[slot]
            slot = slot + 1 if slot < TUN_RING - 1 else 0
            if size == run_size and len(run) < run_limit and buffer.startswith(run_key, offset):
                run.append(packet)
                repeats += 1
                continue
            action = from_tun(packet)
            if action is run_action and size == run_size and len(run) < run_limit:
                run.append(packet)
                continue
            if repeats:
                count_repeats(repeats, run_size)
                repeats = 0
            if run:
                send_run(run, run_action[2])
                run = []
                run_action = None
                run_size = run_limit = 0  # no repeats of a run that was sent
            if action[0] == SEND and action[1] is None:
                run, run_action, run_size = [packet], action, size
                run_limit = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(size, 1))
                run_key = bytes(buffer[offset : offset + VERDICT_KEY])
            elif action[0] != DROP:
                self._emit(action, packet)
        if repeats:
            count_repeats(repeats, run_size)
        if run:
            send_run(run, run_action[2])
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
        """Pump packets until stop(); call on_tick(now) about every `tick` seconds.

        Each turn of the loop, also one that only waited out the tick, sets
        `turned`: the watchdog and /ready see from it that the loop goes round.
        """
        udp_fd, tun_fd, wake_fd = self.sock.fileno(), self.tun.fd, self._wake_r.fileno()
        poller = select.epoll()
        poller.register(udp_fd, select.EPOLLIN)
        poller.register(tun_fd, select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP)
        poller.register(wake_fd, select.EPOLLIN)
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        now = self.turned = self.clock()
        next_tick = now + tick
        short_scheduler_slice()
        # A side that was idle (not ready at the last look, or drained empty) hands its
        # next packet on alone, at once (lone_from_*); the next look tells whether more
        # follow, and a side that stays ready is drained in batches.
        lone = {udp_fd: self.lone_from_udp, tun_fd: self.lone_from_tun}
        drain = {udp_fd: self.drain_udp, tun_fd: self.drain_tun}
        alone = dict.fromkeys(lone, True)
        busy = False
        try:
            while not self.stopping:
                timeout = 0 if busy else max(0.0, next_tick - now)
                busy = False
                was_alone, alone = alone, dict.fromkeys(lone, True)
                for fd, _events in poller.poll(timeout):
                    if fd == wake_fd:
                        self._clear_wakeups()
                    elif was_alone[fd]:
                        alone[fd] = not lone[fd]()
                    else:
                        more = drain[fd]()
                        alone[fd] = not more
                        busy |= more
                now = self.turned = self.clock()
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
        self.tun_file.close()
        self._wake_r.close()
        self._wake_w.close()
