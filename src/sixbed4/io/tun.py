"""TUN devices: open a layer-3 tunnel device and move raw IPv6 packets.

A device we create is non-persistent: the kernel removes it, with its addresses
and routes, when the last file descriptor closes, so even SIGKILL leaves nothing
behind that blocks a restart.  An existing (persistent) device can be attached
to instead (`-d`), and is then left in place.

Every packet read or written carries a 10-byte virtio_net_hdr in front
(IFF_VNET_HDR).  Reads always have an empty one (offloads are turned off at
open, so the kernel hands over finished packets); writes use it to pass a run of
packets of one UDP flow as one GSO packet, which the kernel forwards as one
and splits where it must (see TunWriter).
"""

from __future__ import annotations

import errno
import fcntl
import os
import logging
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


# --- the virtio_net_hdr and writing runs of a UDP flow as one GSO packet -------------

VNET_HEADER = 10  # sizeof(struct virtio_net_hdr), the TUN default
NO_OFFLOAD = bytes(VNET_HEADER)
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (host order)
_NEEDS_CSUM, _GSO_UDP_L4 = 1, 5
_IPV6_UDP = 48  # IPv6 header + UDP header
_RUN_KEY = 46  # bytes 0..45 equal: version, class, flow label, length, next header, hop limit, addresses, ports, UDP length
GSO_MAX_RUN = 64  # the kernel's UDP_MAX_SEGMENTS
_GSO_MAX_PAYLOAD = 65535  # the IPv6 payload length field


class TunWriter:
    """Writes packets that lie in one buffer, each with VNET_HEADER free bytes in front.

    Python and the kernel both pay per write: a TUN write runs the whole IPv6
    forwarding path for its packet.  Consecutive same-size UDP packets of one
    flow (identical IPv6 and UDP headers up to the checksum) are therefore
    written as one UDP GSO packet, forwarded once, split into the original
    packets where it leaves (or by the receiving host's GRO).  Order is kept:
    only neighbours in the batch are joined.  The kernel computes the UDP
    checksums of the split packets, so those are valid even where a peer sent a
    wrong one; the bytes themselves came under the outer UDP checksum.
    Kernels without UDP GSO through TUN (before 6.2) get one write per packet.
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
            self._write_one(offsets[0], size)
            return
        buffer = self.buffer
        joinable = self.gso and size > _IPV6_UDP
        most = min(GSO_MAX_RUN, (_GSO_MAX_PAYLOAD - 8) // (size - _IPV6_UDP)) if joinable else 1
        start, count = 0, len(offsets)
        while start < count:
            first = offsets[start]
            end = start + 1
            if joinable and buffer[first + 6] == 17 and buffer[first + 44] << 8 | buffer[first + 45] == size - 40:
                key = bytes(buffer[first : first + _RUN_KEY])
                limit = min(count, start + most)
                while end < limit and buffer.startswith(key, offsets[end]):
                    end += 1
            if end - start == 1:
                self._write_one(first, size)
            else:
                self._write_run(offsets[start:end], size)
            start = end

    def _write_one(self, offset: int, n: int) -> None:
        try:
            os.write(self.fd, self.view[offset - VNET_HEADER : offset + n])
        except OSError as exc:
            self.on_error(exc, 1)

    def _write_run(self, run: list[int], n: int) -> None:
        """Write the packets of `n` bytes at the offsets in `run` (two or more, one flow) as one GSO packet."""
        first = run[0]
        buffer, view = self.buffer, self.view
        segment = n - _IPV6_UDP
        length = 8 + segment * len(run)
        saved = buffer[first + 4 : first + 6], buffer[first + 44 : first + 48]
        # The first packet's headers describe the whole run; the UDP checksum field
        # holds the pseudo-header sum, the kernel adds the data (CHECKSUM_PARTIAL).
        # A ones' complement sum of 16-bit words is the number modulo 0xFFFF.
        pseudo = (int.from_bytes(buffer[first + 8 : first + 40], "big") + length + 17) % 0xFFFF
        struct.pack_into("!H", buffer, first + 4, length)
        struct.pack_into("!HH", buffer, first + 44, length, pseudo)
        _VNET.pack_into(buffer, first - VNET_HEADER, _NEEDS_CSUM, _GSO_UDP_L4, _IPV6_UDP, segment, 40, 6)
        parts = [view[first - VNET_HEADER : first + n]]
        parts += [view[offset + _IPV6_UDP : offset + n] for offset in run[1:]]
        try:
            os.writev(self.fd, parts)
            failed = None
        except OSError as exc:
            failed = exc
        buffer[first - VNET_HEADER : first] = NO_OFFLOAD
        if failed is None:
            return
        buffer[first + 4 : first + 6], buffer[first + 44 : first + 48] = saved
        if failed.errno != errno.EINVAL:
            self.on_error(failed, len(run))
            return
        log.info("%s takes no UDP GSO packets (%s): one write per packet", self.tun.name, failed.strerror)
        self.gso = False
        for offset in run:
            self._write_one(offset, n)
