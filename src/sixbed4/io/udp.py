"""The UDP/IPv4 socket that carries 6bed4 datagrams."""

from __future__ import annotations

import errno
import socket

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
