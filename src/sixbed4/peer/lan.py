"""6bed4peer --lan IF: the LAN side of a home gateway, the IO of core.lan.

What goes on the LAN is decided by core.lan; this shell puts it there and
takes it away again: addresses, routes and a proxy neighbour through
pyroute2 (io.netlink), the translation table through `nft -f -`, the DHCPv6
server as a child process (dnsmasq), Router Advertisements through a raw
ICMPv6 socket on IF.  The peer daemon calls `lease_changed()` when its /114
comes, changes or goes, and `tick()` with its timers; `close()` (also on
errors) announces router lifetime 0, stops the server and removes everything.

Startup checks come first, so that a wrong setting is one line and exit 2
with nothing changed: the interface (exists, not the tunnel, up, has a
link-local address), a second gateway on it (an abstract unix socket per
interface and network namespace, gone with the process however it ends), the
DHCPv6 server and nft binaries, the kept ULA prefix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import icmp6, lan
from ..core.peer import Lease
from ..io import netlink, service
from ..io.service import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW

log = logging.getLogger("6bed4peer")

DEFAULT_STATE_DIR = "/var/lib/sixbed4"
TUNNEL_ROUTE = dict(gateway="fe80::", priority=1042)  # as the peer's route to the /64
ICMP6_FILTER = 1  # <netinet/icmp6.h>, level IPPROTO_ICMPV6
SERVER_CAPABILITIES = (CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW)  # port 547, its ICMPv6 socket
SERVER_STOP_TIMEOUT = 5.0
SERVER_RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
SERVER_STEADY = 60.0  # s of running that count as a good start (the next failure restarts quickly again)
RS_PER_TICK = 64
RETRY_INTERVAL = 5.0  # s between attempts at what the kernel refused (e.g. the tunnel device is down)


class LanError(RuntimeError):
    """A setting or a missing part that keeps the gateway from starting; str() is the one-line message."""


@dataclass(frozen=True)
class LanSettings:
    interface: str
    mode: str = lan.BOTH
    inbound: str = lan.CLOSED
    dns: tuple[str, ...] = ()  # --lan-dns (lan.parse_resolvers)
    state_dir: str = DEFAULT_STATE_DIR
    dnsmasq: str = "dnsmasq"
    user: str | None = None  # --user: the DHCPv6 server runs as this user too (else as dnsmasq)

    @property
    def capabilities(self) -> tuple[int, ...]:
        """What the daemon keeps after --user: the DHCPv6 server (port 547, ICMPv6) starts later."""
        return SERVER_CAPABILITIES if lan.routes_lanids(self.mode) else (CAP_NET_ADMIN,)


# --- startup -------------------------------------------------------------------------------


def claim(index: int, interface: str) -> socket.socket:
    """An abstract unix socket named after the interface: a second gateway on it fails to bind it.

    Abstract names belong to the network namespace, and the kernel frees them when
    the process ends, also by SIGKILL, so nothing stale is ever left.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(f"\0sixbed4-lan-{index}")
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LanError(f"--lan {interface}: another 6bed4peer is the gateway of {interface} already") from None
        raise
    return sock


def kept_ula(state_dir: str, interface: str, mac: bytes | None) -> bytes:
    """The LAN's ULA /64 from <state_dir>/<interface>.ula, generated (RFC 4193) and written the first time."""
    path = Path(state_dir) / f"{interface}.ula"
    try:
        return lan.parse_ula(path.read_text())
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LanError(f"cannot read {path}: {exc.strerror}") from None
    except lan.UlaError as exc:
        raise LanError(f"{path}: {exc} (correct it, or delete it to generate a new prefix)") from None
    eui = lan.eui64(mac) if mac else os.urandom(8)
    prefix = lan.ula_prefix(lan.ntp_timestamp(time.time()), eui)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".new")
        temporary.write_text(lan.ula_file_text(prefix, interface))
        temporary.replace(path)
    except OSError as exc:
        raise LanError(f"cannot keep the LAN's ULA prefix in {path}: {exc.strerror} (see --state-dir)") from None
    log.info("generated the ULA prefix %s for %s, kept in %s", lan.format_prefix64(prefix), interface, path)
    return prefix


def lease_file(settings: LanSettings, interface: str) -> Path:
    """<state_dir>/<interface>.dhcp/leases: the DHCPv6 server's leases while the gateway runs.

    In a directory of the server's own (see DhcpServer.prepare), so that it can
    make the file, and so that we can remove it on exit also after --user.
    """
    path = Path(settings.state_dir) / f"{interface}.dhcp" / "leases"
    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LanError(f"cannot create the state directory {path.parent.parent}: {exc.strerror} "
                       "(see --state-dir)") from None
    return path


def answers_dns() -> bool:
    """Whether a UDP socket of this network namespace is bound to port 53 for IPv6 (a resolver's)."""
    try:
        lines = Path("/proc/net/udp6").read_text().splitlines()[1:]
    except OSError:
        return True  # cannot tell: no warning
    return any(fields[1].endswith(":0035") for fields in map(str.split, lines) if len(fields) > 1)


def find_binary(name: str, what: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise LanError(f"{what}: {name} not found")
    return found


# --- the parts -----------------------------------------------------------------------------


class RaSocket:
    """A raw ICMPv6 socket on the LAN interface: Router Solicitations in, Router Advertisements out."""

    def __init__(self, interface: str, index: int):
        self.index = index
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            blocked = [0xFFFFFFFF] * 8  # struct icmp6_filter: a set bit blocks that type
            for kind in lan.LAN_ICMP_TYPES:
                blocked[kind >> 5] &= ~(1 << (kind & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            with contextlib.suppress(OSError):  # joined already where forwarding is on
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                                icmp6.ALL_ROUTERS + struct.pack("@I", index))
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def receive(self):
        """Yield (message, hop limit, source) for what is waiting, at most RS_PER_TICK."""
        for _ in range(RS_PER_TICK):
            try:
                message, ancillary, _flags, source = self.sock.recvmsg(1500, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            hop_limit = None
            for level, kind, data in ancillary:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(data) >= 4:
                    hop_limit = struct.unpack("@i", data[:4])[0]
            yield message, hop_limit, ipaddress.IPv6Address(source[0].split("%")[0]).packed

    def send(self, destination: bytes, message: bytes) -> None:
        self.sock.sendto(message, (str(ipaddress.IPv6Address(destination)), 0, 0, self.index))

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Account:
    name: str | None  # None: whoever we are (not root), told to dnsmasq as no --user at all
    uid: int
    gid: int


def server_account(user: str | None) -> Account:
    """Who the DHCPv6 server runs as: --user, else dnsmasq's own user (or nobody) under root, else us."""
    if os.geteuid() != 0:  # --user, or started unprivileged (systemd): the server is us, as we are
        return Account(None, os.geteuid(), os.getegid())
    for name in [user] if user else ["dnsmasq", "nobody"]:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise LanError(f"--user {user}: no such user" if user else "no user dnsmasq or nobody to run dnsmasq as")


def unreachable_part(directory: Path, account: Account) -> Path | None:
    """The first directory on the way to `directory` that `account` may not enter, or None."""
    for part in [*reversed(directory.resolve().parents), directory.resolve()]:
        try:
            info = part.stat()
        except OSError:
            return part
        if info.st_uid == account.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == account.gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed and account.uid != 0:
            return part
    return None


class DhcpServer:
    """dnsmasq as a child: started for a range, restarted for a new one, its log lines passed on.

    We switch it to its user ourselves, before it starts, and tell the kernel to
    end it when we end: the kernel forgets that when a process changes its user,
    which dnsmasq would do itself.
    """

    def __init__(self, binary: str, interface: str, account: Account, lease_file: Path):
        self.binary = binary
        self.interface = interface
        self.account = account
        self.lease_file = lease_file
        self.range: tuple[str, str] | None = None
        self.resolvers: tuple[bytes, ...] = ()
        self.proc: subprocess.Popen | None = None
        self._started = 0.0
        self._failures = 0
        self._restart_at: float | None = None
        self._pending = b""
        self.last_line = ""

    def check(self) -> None:
        """The server's user must reach its lease directory (LanError if not)."""
        blocked = unreachable_part(self.lease_file.parent.parent, self.account)
        if blocked is not None:
            who = self.account.name or f"uid {self.account.uid}"
            raise LanError(f"the DHCPv6 server runs as {who}, who cannot enter {blocked} (see --state-dir)")

    def prepare(self) -> None:
        """The lease directory, the server's user's (dnsmasq makes and writes the file as that user)."""
        directory = self.lease_file.parent
        try:
            directory.mkdir(mode=0o755, exist_ok=True)
            if os.geteuid() == 0 and directory.stat().st_uid != self.account.uid:
                os.chown(directory, self.account.uid, self.account.gid)
        except OSError as exc:
            raise LanError(f"cannot prepare the lease directory {directory}: {exc.strerror}") from None

    def remove_leases(self) -> None:
        """The lease file goes, and its directory if we may (not after --user in a state directory of root's)."""
        try:
            self.lease_file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the lease file %s: %s", self.lease_file, exc.strerror)
            return
        try:
            self.lease_file.parent.rmdir()
        except OSError as exc:
            log.debug("keeping the empty directory %s: %s", self.lease_file.parent, exc.strerror)

    def serve(self, dhcp_range: tuple[str, str] | None, resolvers: tuple[bytes, ...], now: float) -> None:
        """Serve this range, and name these resolvers, from now on (range None: stop serving)."""
        self.stop()
        self.range = dhcp_range
        self.resolvers = resolvers
        self._failures = 0
        if dhcp_range is not None:
            self._start(now)

    def _start(self, now: float) -> None:
        argv = lan.dnsmasq_argv(self.binary, self.interface, self.range, str(self.lease_file),
                                resolvers=self.resolvers, user=self.account.name,
                                verbose=log.isEnabledFor(logging.DEBUG))
        self._restart_at = None
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, preexec_fn=self._become_server,
                                         start_new_session=True)  # a terminal's Ctrl-C is ours to pass on
        except OSError as exc:
            log.error("cannot start %s: %s", self.binary, exc.strerror or exc)
            self._failed(now)
            return
        fcntl.fcntl(self.proc.stderr, fcntl.F_SETFL, os.O_NONBLOCK)
        self._started = now
        log.info("DHCPv6 server %s (pid %d) hands out %s - %s on %s", os.path.basename(self.binary),
                 self.proc.pid, *self.range, self.interface)

    def _become_server(self) -> None:
        """In the child, before exec: its own user with what a DHCPv6 server needs, and die with us."""
        account = self.account
        if os.geteuid() == 0 and account.uid != 0:
            service.switch_user(account.uid, account.gid, SERVER_CAPABILITIES)
        service.die_with_parent()

    def _failed(self, now: float) -> None:
        delay = SERVER_RESTART_DELAYS[min(self._failures, len(SERVER_RESTART_DELAYS) - 1)]
        self._failures += 1
        self._restart_at = now + delay
        log.error("the DHCPv6 server is not running; starting it again in %.0fs", delay)

    def tick(self, now: float) -> None:
        proc = self.proc
        if proc is not None:
            self._relay(proc)
            code = proc.poll()
            if code is not None:
                self._relay(proc, final=True)
                proc.stderr.close()
                self.proc = None
                log.error("the DHCPv6 server exited with code %d%s", code,
                          f": {self.last_line}" if self.last_line else "")
                if now - self._started >= SERVER_STEADY:
                    self._failures = 0
                self._failed(now)
        elif self._restart_at is not None and now >= self._restart_at and self.range is not None:
            self._start(now)

    def _relay(self, proc: subprocess.Popen, final: bool = False) -> None:
        """Pass the server's log lines on to ours ("dnsmasq-dhcp[pid]: " taken off)."""
        try:
            while chunk := proc.stderr.read(65536):
                self._pending += chunk
        except (BlockingIOError, ValueError):
            pass
        *lines, self._pending = self._pending.split(b"\n")
        if final and self._pending:
            lines.append(self._pending)
            self._pending = b""
        for raw in lines:
            text = raw.decode(errors="replace").strip()
            if text:
                text = text.split("]: ", 1)[-1] if text.startswith("dnsmasq") else text
                self.last_line = text
                log.info("dnsmasq: %s", text)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        self._restart_at = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._relay(proc, final=True)
        proc.stderr.close()


def nft(binary: str, script: str) -> str | None:
    """Run an nft script; the error text, or None when it worked."""
    try:
        result = subprocess.run([binary, "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
    return None


# --- the gateway -----------------------------------------------------------------------------


class LanGateway:
    """The LAN of one 6bed4peer: core.lan's plans, put in place."""

    def __init__(self, config: lan.LanConfig, lan_setup: netlink.InterfaceSetup, tun_setup: netlink.InterfaceSetup,
                 ra: RaSocket, server: DhcpServer | None, nft_binary: str | None):
        self.config = config
        self.lan_setup = lan_setup
        self.tun_setup = tun_setup
        self.ra = ra
        self.server = server
        self.nft_binary = nft_binary
        self.advertiser = lan.Advertiser(config.mac)
        self.plan = lan.LanPlan()
        self._send_failed = False
        self._table_in_place = False  # the nftables table (translation, inbound filter)
        self._refused: set[lan.Fact] = set()  # what the kernel refused, tried again every RETRY_INTERVAL
        self._next_retry = 0.0

    @classmethod
    def open(cls, settings: LanSettings, tun_setup: netlink.InterfaceSetup,
             cleanup: contextlib.ExitStack, now: float) -> "LanGateway":
        """Check everything, then set up the LAN without a /114 yet; `cleanup` takes it all down.

        Raises LanError (one line) before any change when a setting is wrong.
        """
        name = settings.interface
        if name == tun_setup.ifname:
            raise LanError(f"--lan {name}: that is the tunnel device; name the interface of the LAN")
        try:
            lan_setup = netlink.InterfaceSetup(name, tun_setup.record)  # one undo record for the daemon
        except netlink.NetlinkSetupError as exc:
            raise LanError(f"--lan {name}: {exc.strerror}") from None
        cleanup.callback(lan_setup.close)
        if not lan_setup.is_up():
            raise LanError(f"--lan {name}: the interface is down (ip link set {name} up)")
        if lan_setup.link_local() is None:
            raise LanError(f"--lan {name}: the interface has no IPv6 link-local address "
                           "(is IPv6 disabled on it, or addr_gen_mode 1?)")
        cleanup.enter_context(claim(lan_setup.index, name))
        server = nft_binary = None
        if lan.routes_lanids(settings.mode):
            binary = find_binary(settings.dnsmasq, f"--lan-mode {settings.mode} needs the DHCPv6 server "
                                                   "(Debian: apt install dnsmasq-base; or --lan-mode nat66)")
            server = DhcpServer(binary, name, server_account(settings.user), lease_file(settings, name))
            server.check()
        if lan.uses_nft(settings.mode, settings.inbound):
            need = (f"--lan-mode {settings.mode} needs nftables (apt install nftables)" if lan.translates(settings.mode)
                    else "--lan-inbound closed needs nftables (apt install nftables; or --lan-inbound open)")
            nft_binary = find_binary("nft", need)
            problem = lan.nft_name_problem(tun_setup.ifname) or lan.nft_name_problem(name)
            if problem:
                raise LanError(problem)
        ula = kept_ula(settings.state_dir, name, lan_setup.mac()) if lan.translates(settings.mode) else None
        config = lan.LanConfig(name, settings.mode, ula, lan_setup.mac(), tun_setup.ifname, settings.inbound,
                               settings.dns)
        try:
            ra = RaSocket(name, lan_setup.index)
        except OSError as exc:
            raise LanError(f"--lan {name}: cannot open the ICMPv6 socket for Router Advertisements: "
                           f"{exc.strerror}") from None
        gateway = cls(config, lan_setup, tun_setup, ra, server, nft_binary)
        cleanup.callback(gateway.close)
        if server is not None:
            server.prepare()
        gateway._start(now)
        return gateway

    def _start(self, now: float) -> None:
        setup = self.lan_setup
        try:
            setup.set_sysctl("forwarding", "1", interface="all")  # a router from now on
            if lan.routes_lanids(self.config.mode):
                setup.set_sysctl("proxy_ndp", "1")
        except OSError as exc:
            raise LanError(f"cannot turn on IPv6 forwarding: {exc.strerror}") from None
        if self.nft_binary:
            error = nft(self.nft_binary, lan.nft_replace(self.config))
            if error:
                raise LanError(f"nft: {error}")
            self._table_in_place = True
        first = lan.plan(self.config, None)
        try:  # at the start, what the kernel refuses is an error: nothing runs half set up
            for fact in lan.Changes.between(self.plan, first).add:
                self._fact(fact, add=True)
        except netlink.NetlinkSetupError as exc:
            raise LanError(exc.strerror or str(exc)) from None
        self.plan = first
        self.advertiser.update(first, now)
        log.info("gateway of the LAN on %s (%s%s): %s", self.config.interface, self.config.mode,
                 ", inbound closed" if lan.filters_inbound(self.config.mode, self.config.inbound) else "",
                 self.plan.describe())
        if lan.SELF in self.config.dns and not answers_dns():
            log.warning("--lan-dns self: nothing on this host answers DNS over IPv6 (UDP port 53) yet; "
                        "LAN devices ask it in vain until a resolver listens there")

    def _apply(self, new: lan.LanPlan, now: float) -> None:
        """Go from the current plan to `new`; what the kernel refuses is logged and tried again later."""
        changes = lan.Changes.between(self.plan, new)
        for fact in changes.remove:
            self._refused.discard(fact)
            try:
                self._fact(fact, add=False)
            except netlink.NetlinkSetupError as exc:
                log.warning("LAN on %s: %s", self.config.interface, exc.strerror or exc)
        self.plan = new
        self._install(changes.add)
        if changes.restart_server and self.server is not None:
            self.server.serve(new.dhcp_range, new.resolvers, now)
        self.advertiser.update(new, now)
        self.tick(now)  # the first RA now, not a tick later

    def _install(self, facts) -> None:
        for fact in facts:
            try:
                self._fact(fact, add=True)
            except netlink.NetlinkSetupError as exc:
                if fact not in self._refused:
                    log.warning("LAN on %s: %s; trying again every %.0fs", self.config.interface,
                                exc.strerror or exc, RETRY_INTERVAL)
                self._refused.add(fact)
                continue
            if fact in self._refused:
                self._refused.discard(fact)
                log.info("LAN on %s: %s is in place now", self.config.interface, fact)

    def restore(self) -> None:
        """The LAN interface is up again after being down: its addresses, proxy entry, server and RAs."""
        now = time.monotonic()
        self.lan_setup.restore()
        if self.server is not None:
            self.server.serve(self.plan.dhcp_range, self.plan.resolvers, now)
        self.advertiser.update(self.plan, now)

    def _fact(self, fact: lan.Fact, add: bool) -> None:
        setup = self.lan_setup
        if fact.kind == "address":
            if add:
                setup.add_address(fact.address, fact.prefixlen, prefix_route=True)
            else:
                setup.remove_address(fact.address, fact.prefixlen)
        elif fact.kind == "no-anycast":
            if add:  # taking the address away takes its anycast address along
                setup.drop_anycast(fact.address)  # see also tick(): the kernel adds it a moment later
        elif fact.kind == "tunnel-route":
            change = self.tun_setup.add_route if add else self.tun_setup.remove_route
            change(fact.address, fact.prefixlen, **TUNNEL_ROUTE)
        elif fact.kind == "unreachable":
            (setup.add_route if add else setup.remove_route)(fact.address, fact.prefixlen, type="unreachable")
        elif fact.kind == "proxy":
            (setup.add_proxy_neighbour if add else setup.remove_proxy_neighbour)(fact.address)

    def lease_changed(self, lease: Lease | None, now: float) -> None:
        """The peer's /114 came, changed (NAT rebinding) or went: the LAN follows."""
        new = lan.plan(self.config, lease)
        if new == self.plan:  # e.g. only the router's extra routes changed
            return
        self._apply(new, now)
        log.info("LAN on %s now has %s", self.config.interface, new.describe())

    def tick(self, now: float) -> None:
        # The kernel makes the anycast address when the address is ready (a moment after it was
        # added), and again when forwarding is set or the link comes back: keep taking it away.
        for fact in self.plan.facts:
            if fact.kind == "no-anycast":
                try:
                    self._fact(fact, add=True)
                except netlink.NetlinkSetupError as exc:
                    log.debug("%s", exc)
        if self._refused and now >= self._next_retry:
            self._next_retry = now + RETRY_INTERVAL
            self._install(sorted(self._refused))
        for message, hop_limit, source in self.ra.receive():
            self.advertiser.solicited(message, hop_limit, source, now)
        for destination, message in self.advertiser.due(now):
            self._send(destination, message)
        if self.server is not None:
            self.server.tick(now)

    def _send(self, destination: bytes, message: bytes) -> None:
        try:
            self.ra.send(destination, message)
        except OSError as exc:
            self.advertiser.counters.drop("send_error")
            if not self._send_failed:  # once until it works again, not per RA
                self._send_failed = True
                log.warning("cannot send Router Advertisements on %s: %s", self.config.interface, exc.strerror)
            return
        self._send_failed = False

    def close(self) -> None:
        """Router lifetime 0 on the LAN, the server stopped, every address, route and rule removed."""
        if self.plan.prefixes or self.plan.default_router:
            self._send(icmp6.ALL_NODES, self.advertiser.final())
        self.ra.close()
        if self.server is not None:
            self.server.stop()
            self.server.remove_leases()
        for fact in lan.Changes.between(self.plan, lan.LanPlan()).remove:
            try:
                self._fact(fact, add=False)
            except netlink.NetlinkSetupError as exc:
                log.debug("removing %s: %s", fact, exc)
        self.plan = lan.LanPlan()
        if self._table_in_place:
            self._table_in_place = False
            error = nft(self.nft_binary, lan.nft_delete(self.config))
            if error:
                log.warning("removing the nftables table %s: %s", lan.nft_table(self.config.interface), error)
        self.lan_setup.undo()

