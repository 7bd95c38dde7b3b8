"""TUN devices: open a layer-3 tunnel device and move raw IPv6 packets.

A device we create is non-persistent: the kernel removes it, with its addresses
and routes, when the last file descriptor closes, so even SIGKILL leaves nothing
behind that blocks a restart.  An existing (persistent) device can be attached
to instead (`-d`), and is then left in place.

Every packet read or written carries a 10-byte virtio_net_hdr in front
(IFF_VNET_HDR).  Reads always have an empty one (offloads are turned off at
open, so the kernel hands over finished packets); writes use it to pass a run of
packets of one UDP flow or TCP connection as one GSO packet, which the kernel
forwards as one and splits where it must (see TunWriter).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
IFNAMSIZ = 16


class TunError(OSError):
    """Opening or using the TUN device failed; str() is the one-line explanation."""


def _check_name(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name or name in (".", ".."):
        raise TunError(errno.EINVAL, f"invalid interface name {name!r} (1-15 characters, no '/' or spaces)")


class Tun:
    """An open TUN device carrying IPv6 packets behind a virtio_net_hdr (IFF_NO_PI, IFF_VNET_HDR)."""

    def __init__(self, name: str, fd: int, created: bool):
        self.name = name
        self.fd = fd
        self.created = created

    @classmethod
    def open(cls, name: str, *, create: bool) -> "Tun":
        """Create a new device `name` (fails if it exists) or attach to an existing one."""
        _check_name(name)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open /dev/net/tun: {exc.strerror}") from None
        flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | (IFF_TUN_EXCL if create else 0)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EPERM:
                hint = "run as root or with CAP_NET_ADMIN"
            elif exc.errno == errno.EBUSY and create:
                hint = "a device of that name exists already (another instance running?)"
            elif exc.errno == errno.EBUSY:
                hint = "the device is in use by another process"
            elif exc.errno == errno.EINVAL:
                hint = "the existing device is not a TUN device of this kind"
            else:
                hint = exc.strerror
            raise TunError(exc.errno, f"cannot {'create' if create else 'attach to'} TUN device {name}: {hint}") from None
        try:
            # No offloads, whatever an earlier user of an existing device set: the kernel
            # then hands over only finished packets (checksummed, not GSO).
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        except OSError as exc:
            os.close(fd)
            raise TunError(exc.errno, f"cannot turn off offloads on TUN device {name}: {exc.strerror}") from None
        return cls(name, fd, created=create)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Tun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the virtio_net_hdr and writing runs of one flow as one GSO packet ---------------

VNET_HEADER = 10  # sizeof(struct virtio_net_hdr), the TUN default
NO_OFFLOAD = bytes(VNET_HEADER)
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (host order)
_NEEDS_CSUM, _GSO_TCPV6, _GSO_UDP_L4 = 1, 4, 5
_TCP_ACK, _TCP_PSH = 0x10, 0x08
_SEQUENCE = struct.Struct("!I")
_IPV6_UDP = 48  # IPv6 header + UDP header
_UDP_RUN_KEY = 46  # bytes 0..45 equal: version, class, flow label, length, next header, hop limit, addresses, ports, UDP length
GSO_MAX_RUN = 64  # packets per GSO write: the kernel's UDP_MAX_SEGMENTS, and a batch
_GSO_MAX_PAYLOAD = 65535  # the IPv6 payload length field


class TunWriter:
    """Writes packets that lie in one buffer, each with VNET_HEADER free bytes in front.

    Python and the kernel both pay per write: a TUN write runs the whole IPv6
    forwarding path for its packet.  Consecutive same-size packets of one UDP
    flow (identical IPv6 and UDP headers up to the checksum), or consecutive
    segments of one TCP connection (as the kernel's GRO joins them), are
    therefore written as one GSO packet, forwarded once, split into the
    original packets where it leaves (or by the receiving host's GRO).  Order
    is kept: only neighbours in the batch are joined.  The kernel computes the
    checksums of the split packets, so those are valid even where a peer sent a
    wrong one; the bytes themselves came under the outer UDP checksum.
    Kernels that refuse such writes (UDP GSO came in 6.2) get one write per packet.
    """

    def __init__(self, tun: Tun, buffer: bytearray, on_error):
        self.tun = tun
        self.fd = tun.fd
        self.buffer = buffer
        self.view = memoryview(buffer)
        self.on_error = on_error  # on_error(exc, packets): count, or raise if the device is gone
        self.gso = True

    def write(self, size: int, offsets: list[int]) -> None:
        """Write the packets of `size` bytes at `offsets` in the buffer, in order.

        The caller passes neighbours that may be one flow (same size, same
        peer); here they are told apart by their headers.
        """
        if len(offsets) == 1:  # the common case with many peers: no questions asked
            self.write_one(offsets[0], size)
            return
        buffer = self.buffer
        start, count = 0, len(offsets)
        while start < count:
            first = offsets[start]
            end = start + 1
            if self.gso and size > _IPV6_UDP:
                if buffer[first + 6] == 17:
                    end = self._udp_run_end(offsets, start, size)
                elif buffer[first + 6] == 6:
                    end = self._tcp_run_end(offsets, start, size)
            if end - start == 1:
                self.write_one(first, size)
            else:
                self._write_run(offsets[start:end], size)
            start = end

    def _udp_run_end(self, offsets: list[int], start: int, size: int) -> int:
        """Where the run of one UDP flow that starts at offsets[start] ends (exclusive)."""
        buffer, first = self.buffer, offsets[start]
        if buffer[first + 44] << 8 | buffer[first + 45] != size - 40:
            return start + 1  # a UDP length that is not the packet's: not ours to rewrite
        key = bytes(buffer[first : first + _UDP_RUN_KEY])
        end, limit = start + 1, min(len(offsets), start + GSO_MAX_RUN, start + (_GSO_MAX_PAYLOAD - 8) // (size - _IPV6_UDP))
        while end < limit and buffer.startswith(key, offsets[end]):
            end += 1
        return end

    def _tcp_run_end(self, offsets: list[int], start: int, size: int) -> int:
        """Where the run of one TCP flow's consecutive segments that starts at offsets[start] ends.

        As the kernel's GRO: same headers but for the sequence number, which
        must continue where the previous segment ended; only ACK set (PSH may
        end the run); identical options (timestamps).
        """
        buffer, first = self.buffer, offsets[start]
        header = 40 + (buffer[first + 52] >> 4) * 4
        segment = size - header
        if buffer[first + 53] != _TCP_ACK or header < 60 or segment <= 0:
            return start + 1
        addresses_ports = bytes(buffer[first : first + 44])
        ack_flags_window = bytes(buffer[first + 48 : first + 56])
        urgent_options = bytes(buffer[first + 58 : first + header])
        pushed = ack_flags_window[:5] + bytes((_TCP_ACK | _TCP_PSH,)) + ack_flags_window[6:]
        sequence = _SEQUENCE.unpack_from(buffer, first + 44)[0]
        end, limit = start + 1, min(len(offsets), start + GSO_MAX_RUN, start + (_GSO_MAX_PAYLOAD - header + 40) // segment)
        while end < limit:
            offset = offsets[end]
            sequence = (sequence + segment) & 0xFFFFFFFF
            if not (buffer.startswith(addresses_ports, offset) and buffer.startswith(urgent_options, offset + 58)
                    and _SEQUENCE.unpack_from(buffer, offset + 44)[0] == sequence):
                break
            if buffer.startswith(ack_flags_window, offset + 48):
                end += 1
            elif buffer.startswith(pushed, offset + 48):
                return end + 1  # PSH: the last segment of a run
            else:
                break
        return end

    def write_one(self, offset: int, n: int) -> None:
        try:
            os.write(self.fd, self.view[offset - VNET_HEADER : offset + n])
        except OSError as exc:
            self.on_error(exc, 1)

    def _write_run(self, run: list[int], n: int) -> None:
        """Write the packets of `n` bytes at the offsets in `run` (two or more, one flow) as one GSO packet."""
        first = run[0]
        buffer, view = self.buffer, self.view
        last = run[-1]
        if buffer[first + 6] == 17:
            header, gso_type, checksum_at, protocol = _IPV6_UDP, _GSO_UDP_L4, 46, 17
        else:
            header, gso_type, checksum_at, protocol = 40 + (buffer[first + 52] >> 4) * 4, _GSO_TCPV6, 56, 6
        segment = n - header
        length = header - 40 + segment * len(run)
        saved = bytes(buffer[first : first + header])
        # The first packet's headers describe the whole run; the checksum field holds
        # the pseudo-header sum, the kernel adds the data (CHECKSUM_PARTIAL).
        # A ones' complement sum of 16-bit words is the number modulo 0xFFFF.
        pseudo = (int.from_bytes(buffer[first + 8 : first + 40], "big") + length + protocol) % 0xFFFF
        struct.pack_into("!H", buffer, first + 4, length)
        if protocol == 17:
            struct.pack_into("!H", buffer, first + 44, length)
        else:
            buffer[first + 53] = buffer[last + 53]  # PSH of the last segment: the kernel puts it on the last
        struct.pack_into("!H", buffer, first + checksum_at, pseudo)
        _VNET.pack_into(buffer, first - VNET_HEADER, _NEEDS_CSUM, gso_type, header, segment, 40, checksum_at - 40)
        parts = [view[first - VNET_HEADER : first + n]]
        parts += [view[offset + header : offset + n] for offset in run[1:]]
        try:
            os.writev(self.fd, parts)
            failed = None
        except OSError as exc:
            failed = exc
        buffer[first - VNET_HEADER : first] = NO_OFFLOAD
        if failed is None:
            return
        buffer[first : first + header] = saved
        if failed.errno != errno.EINVAL:
            self.on_error(failed, len(run))
            return
        log.info("%s takes no GSO packets (%s): one write per packet", self.tun.name, failed.strerror)
        self.gso = False
        for offset in run:
            self.write_one(offset, n)
