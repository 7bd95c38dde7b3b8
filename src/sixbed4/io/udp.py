"""The UDP/IPv4 socket that carries 6bed4 datagrams."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; not in the socket module


class UdpError(OSError):
    """Opening the socket failed; str() is the one-line explanation."""


def open_udp(host: str, port: int, *, ttl: int | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to host:port, with large kernel buffers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for force, option in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:  # with CAP_NET_ADMIN past net.core.rmem_max/wmem_max (default 208 KiB: bursts would overflow)
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        if ttl is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            hint = "address already in use (another 6bed4 router running?)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = "no interface has this address (behind 1:1 NAT? use --bind 0.0.0.0)"
        elif exc.errno == errno.EACCES:
            hint = "permission denied"
        else:
            hint = exc.strerror or str(exc)
        raise UdpError(exc.errno, f"cannot bind UDP {host}:{port}: {hint}") from None
    sock.setblocking(False)
    return sock


# --- receiving in batches: recvmmsg(2) ---------------------------------------------

class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("received", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
MSG_DONTWAIT, MSG_TRUNC = 0x40, 0x20
_SOCKADDR_IN = 16
_ORIGIN_CACHE_LIMIT = 4096


class BatchReceiver:
    """Up to `slots` datagrams per system call into one buffer allocated once.

    recvfrom_into costs one system call per datagram and formats the origin's
    address into a new string each time; recvmmsg fills `slots` buffers and
    their raw source addresses in one call, and origins are looked up by the
    6 raw bytes (port, address), so a known peer costs no formatting.
    Datagram i lies in `buffer` at offsets[i], with `headroom` free bytes in
    front (for a TUN write's header).  Datagrams longer than `slot_size` are
    cut there (and counted too long by the cores, whose limit is far below).
    """

    def __init__(self, sock: socket.socket, slots: int = 64, slot_size: int = 2048, headroom: int = 0):
        self.slots = slots
        self._fd = sock.fileno()
        stride = headroom + slot_size
        self.buffer = bytearray(slots * stride)
        self.offsets = [i * stride + headroom for i in range(slots)]
        view = memoryview(self.buffer)
        self.packets = [view[at : at + slot_size] for at in self.offsets]
        self._data = (ctypes.c_char * len(self.buffer)).from_buffer(self.buffer)
        self._names = (ctypes.c_char * (slots * _SOCKADDR_IN))()
        self._iovs = (_IoVec * slots)()
        self._messages = (_MMsgHdr * slots)()
        base, names = ctypes.addressof(self._data), ctypes.addressof(self._names)
        for i, at in enumerate(self.offsets):
            self._iovs[i].base, self._iovs[i].length = base + at, slot_size
            header = self._messages[i].hdr
            header.name, header.namelen = names + i * _SOCKADDR_IN, _SOCKADDR_IN
            header.iov, header.iovlen = ctypes.pointer(self._iovs[i]), 1
        self._header_view = memoryview(self._messages).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        record, at = ctypes.sizeof(_MMsgHdr), _MMsgHdr.received.offset
        # One struct per possible count reads every length (or raw origin) in one call.
        self._lengths = [struct.Struct(f"{at}xI{record - at - 4}x" * count) for count in range(slots + 1)]
        self._raw_origins = [struct.Struct("2x6s8x" * count) for count in range(slots + 1)]
        self._origins: dict[bytes, tuple[str, int]] = {}

    def receive(self):
        """(lengths, origins) of the datagrams now in the slots; empty when none are waiting."""
        count = _recvmmsg(self._fd, self._messages, self.slots, MSG_DONTWAIT | MSG_TRUNC, None)
        if count <= 0:
            error = ctypes.get_errno()
            if count == 0 or error in (errno.EAGAIN, errno.EINTR):
                return (), ()
            raise OSError(error, os.strerror(error))
        origins = self._origins
        known = [origins.get(raw) or self._origin(raw) for raw in self._raw_origins[count].unpack_from(self._names_view)]
        return self._lengths[count].unpack_from(self._header_view), known

    def _origin(self, raw: bytes) -> tuple[str, int]:
        """(dotted quad, port) for a raw big-endian port + IPv4 address, remembered."""
        if len(self._origins) >= _ORIGIN_CACHE_LIMIT:
            self._origins.clear()
        origin = self._origins[raw] = (socket.inet_ntoa(raw[2:]), int.from_bytes(raw[:2], "big"))
        return origin


# --- sending runs: UDP GSO -----------------------------------------------------------

SOL_UDP, UDP_SEGMENT = 17, 103
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS is 64 or more
GSO_MAX_BYTES = 65000  # below the 65507-byte UDP payload limit


class GsoSender:
    """Sends a run of same-size datagrams for one destination in one system call.

    With UDP GSO (UDP_SEGMENT) the kernel splits the gathered run into
    datagrams; without it (refused once, then never tried again) one sendto
    per datagram.
    """

    def __init__(self, sock: socket.socket, on_error):
        self.sock = sock
        self.on_error = on_error  # on_error(exc, packets lost)
        self.gso = True
        self._segment_options: dict[int, list] = {}

    def send_run(self, packets: list, address) -> None:
        sock = self.sock
        if len(packets) > 1 and self.gso:
            size = len(packets[0])
            options = self._segment_options.get(size)
            if options is None:
                options = self._segment_options[size] = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", size))]
            try:
                sock.sendmsg(packets, options, 0, address)
                return
            except (BlockingIOError, InterruptedError) as exc:
                self.on_error(exc, len(packets))
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self.on_error(exc, len(packets))
                    return
                log.info("UDP GSO unavailable (%s): sending one datagram per packet", exc.strerror)
                self.gso = False
        for packet in packets:
            try:
                sock.sendto(packet, address)
            except OSError as exc:
                self.on_error(exc, 1)
