"""TUN devices: open a layer-3 tunnel device and move raw IPv6 packets.

A device we create is non-persistent: the kernel removes it, with its addresses
and routes, when the last file descriptor closes, so even SIGKILL leaves nothing
behind that blocks a restart.  An existing (persistent) device can be attached
to instead (`-d`), and is then left in place.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000
IFNAMSIZ = 16


class TunError(OSError):
    """Opening or using the TUN device failed; str() is the one-line explanation."""


def _check_name(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name.strip() != name or name in (".", ".."):
        raise TunError(errno.EINVAL, f"invalid interface name {name!r} (1-15 characters, no '/' or spaces)")


class Tun:
    """An open TUN device carrying bare IPv6 packets (IFF_NO_PI)."""

    def __init__(self, name: str, fd: int, created: bool):
        self.name = name
        self.fd = fd
        self.created = created
        self.file = open(fd, "r+b", buffering=0, closefd=False)  # readinto() returns None on EAGAIN

    @classmethod
    def open(cls, name: str, *, create: bool) -> "Tun":
        """Create a new device `name` (fails if it exists) or attach to an existing one."""
        _check_name(name)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open /dev/net/tun: {exc.strerror}") from None
        flags = IFF_TUN | IFF_NO_PI | (IFF_TUN_EXCL if create else 0)
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
        return cls(name, fd, created=create)

    def close(self) -> None:
        if self.fd >= 0:
            self.file.close()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Tun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
