"""The peer daemon: TUN device, UDP socket, solicit, apply leases, pump, clean up.

All decisions are in core.peer.PeerCore; this shell opens the devices, sends what
the core's timer asks for, and applies lease changes with netlink and the
extension hook.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import shutil
import subprocess
import time
from dataclasses import dataclass

from .. import cliutil
from ..config import Reload
from ..core import addr
from ..core.peer import Configure, Datagram, Lease, Notice, PeerConfig, PeerCore, Unconfigure
from ..fastpath import control as fastpath
from ..io import netlink, service, undo
from ..io.datapath import Datapath, DatapathError
from ..io.metrics import CountersCollector, MetricsError
from ..io.tun import TunError
from ..io.udp import UdpError, open_udp
from .lan import LanError, LanGateway, LanSettings

log = logging.getLogger("6bed4peer")

TUN_MTU = 1280
TICK = 0.2  # how often the core's timers run: also the delay before an RA takes effect
DEFAULT_ROUTE_METRIC = 1042
ROUTE_METRIC = 1052
ROUTER_LINK_LOCAL = "fe80::"
HOOK_TIMEOUT = 10.0

# What each signal does (the man page's SIGNALS section is made from this table).
SIGNALS = {
    signal.SIGTERM: ("stop", "stop cleanly: detach the fast path, tell the hook del-offers, remove the address and "
                             "routes and the TUN device the peer created (with --lan: a last RA with router "
                             "lifetime 0 on the LAN, dnsmasq stopped, the LAN's addresses, routes and nftables table "
                             "removed), exit 0"),
    signal.SIGINT: ("stop", "the same as SIGTERM"),
    signal.SIGHUP: ("reload", "read the --config file again; a new log-level and a new exthook take effect at once "
                              "(the old hook is told del-offers, the new one gets the offers), without dropping a "
                              "packet; any other changed setting is logged and takes effect at the next start"),
    signal.SIGABRT: (None, "what systemd's watchdog sends once the peer stopped saying WATCHDOG=1, its data path "
                           "stalled (see ENVIRONMENT): every thread's Python traceback goes to stderr, then the "
                           "process ends as by SIGKILL"),
    signal.SIGKILL: (None, "the kernel removes the TUN device the peer created, with its address and routes, and the "
                           "fast path's tcx links, and ends dnsmasq; the hook is not told, so offers it made stay "
                           "until the next start's del-offers; the rest (-d's device settings, the LAN's addresses, "
                           "routes, proxy entry and forwarding, and before Linux 6.6 the fast path's tc filters) "
                           "stays until the next start or 6bed4 take-back peer (the unit's ExecStopPost=) takes it "
                           "back (see FILES: the undo record)"),
}
LIVE_SETTINGS = frozenset({"hook"})  # what a reload changes in a running peer


@dataclass(frozen=True)
class PeerSettings:
    config: PeerConfig
    bind: tuple[str, int]
    tun_name: str = "6bed4"
    create_tun: bool = True
    hook: str | None = None
    metrics: tuple[str, int] | None = None
    user: str | None = None
    lan: LanSettings | None = None  # --lan: the gateway of a LAN
    fast_path: str = "auto"  # the kernel fast path: auto, on, off


def configure_tun(setup: netlink.InterfaceSetup) -> None:
    """No kernel addresses, DAD, autoconfiguration, RAs or forwarding on the 6bed4 device."""
    setup.set_sysctl("addr_gen_mode", "1")
    setup.set_sysctl("accept_dad", "0")
    setup.set_sysctl("autoconf", "0")
    setup.set_sysctl("accept_ra", "0")
    setup.set_sysctl("forwarding", "0")
    setup.link_up(TUN_MTU)


class Hook:
    """The extension hook: `script PID verb args...`, run to completion, failures logged."""

    def __init__(self, script: str | None):
        self.script = script
        self.offered = False

    def _run(self, *args: str) -> None:
        if not self.script:
            return
        argv = [self.script, str(os.getpid()), *args]
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=HOOK_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("hook %s: %s", " ".join(argv), exc)
            return
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            log.warning("hook %s exited %d%s", " ".join(argv), result.returncode,
                        f": {detail[-1]}" if detail else "")

    def offer(self, lease: Lease) -> None:
        start, end = lease.offer_range
        self._run("add-range-offer", addr.format_address(start), addr.format_address(end))
        router = addr.format_address(lease.router_address)
        for prefix, length in lease.routes:
            self._run("add-route-offer", addr.format_address(prefix), str(length), router)
        self.offered = True

    def withdraw(self) -> None:
        self._run("del-offers")
        self.offered = False


class LeaseApplier:
    """Puts a lease on the TUN device (address, routes) and takes it off again.

    What the kernel refuses (another route in the way, the device down) stops
    nothing else: it is logged once and tried again by retry() at each
    keepalive, and by install() when the device is up again.
    """

    def __init__(self, setup: netlink.InterfaceSetup, config: PeerConfig, hook: Hook):
        self.setup = setup
        self.config = config
        self.hook = hook
        self.lease: Lease | None = None
        self.refused: set[str] = set()  # what the kernel refused and is to be tried again

    def _routes(self, lease: Lease):
        gateway = dict(gateway=ROUTER_LINK_LOCAL, priority=DEFAULT_ROUTE_METRIC)
        if self.config.default_route:
            yield "::", 0, gateway
        # the rest of the /64 (other peers, the router host) is reached through the router too
        yield addr.format_address(lease.prefix64), 64, gateway
        for prefix, length in lease.routes:
            yield addr.format_address(prefix), length, dict(gateway=ROUTER_LINK_LOCAL, priority=ROUTE_METRIC)

    def _steps(self, lease: Lease):
        """(what, how to add it) for each part of the lease, the address first."""
        address = addr.format_address(lease.address)
        yield f"address {address}/128", functools.partial(self.setup.add_address, address, 128)
        for prefix, length, extra in self._routes(lease):
            yield f"route {prefix}/{length}", functools.partial(self.setup.add_route, prefix, length, **extra)

    def apply(self, lease: Lease, old: Lease | None) -> None:
        if old is not None:
            self.remove(old, keep=lease)
        self.lease = lease
        self.install()
        self.hook.offer(lease)

    def install(self) -> None:
        """Add every part of the lease that is missing; log what the kernel refuses once, keep it for retry()."""
        if self.lease is None:
            return
        refused = set()
        for what, add in self._steps(self.lease):
            try:
                add()
            except netlink.NetlinkSetupError as exc:
                refused.add(what)
                if what not in self.refused:
                    log.warning("%s; trying again at each keepalive", exc.strerror or exc)
                continue
            if what in self.refused:
                log.info("%s is in place now", what)
        self.refused = refused

    def retry(self) -> None:
        """Try again what the kernel refused."""
        if self.refused:
            self.install()

    def remove(self, old: Lease, keep: Lease | None = None) -> None:
        if self.hook.offered:
            self.hook.withdraw()
        if keep is None:
            self.lease = None
            self.refused = set()
        wanted = set() if keep is None else {(p, n) for p, n, _ in self._routes(keep)}
        for prefix, length, extra in self._routes(old):
            if (prefix, length) not in wanted:
                self.setup.remove_route(prefix, length, **extra)
        if keep is None or keep.address != old.address:
            self.setup.remove_address(addr.format_address(old.address), 128)


class Ticker:
    """Runs the core's timers and carries out what they return."""

    def __init__(self, core: PeerCore, sock: socket.socket, applier: LeaseApplier, lan: LanGateway | None = None):
        self.core = core
        self.sock = sock
        self.applier = applier
        self.lan = lan
        self.ready = False  # told systemd READY=1: once the first address is configured
        self.default_ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        self.router = core.config.router

    def __call__(self, now: float) -> None:
        for event in self.core.on_tick(now):
            if isinstance(event, Datagram):
                self.send(event)
                if event.kind == "keepalive":
                    self.applier.retry()
            elif isinstance(event, Configure):
                self.configure(event)
                if self.lan:
                    self.lan.lease_changed(event.lease, now)
            elif isinstance(event, Unconfigure):
                log.warning("the router withdrew %s; soliciting a new prefix", event.old.describe())
                self.applied(lambda: self.applier.remove(event.old))
                if self.lan:
                    self.lan.lease_changed(None, now)
            elif isinstance(event, Notice):
                log.log(event.level, "%s", event.message)
        if self.lan:
            self.lan.tick(now)

    def send(self, datagram: Datagram) -> None:
        ttl = datagram.ttl
        try:
            if ttl is not None and ttl != self.default_ttl:
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                try:
                    self.sock.sendto(datagram.data, self.router)
                finally:
                    self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.default_ttl)
            else:
                self.sock.sendto(datagram.data, self.router)
        except OSError as exc:
            self.core.counters.drop("send_error")
            log.debug("sending %s to %s:%d: %s", datagram.kind, *self.router, exc.strerror)

    def configure(self, event: Configure) -> None:
        if event.old is None:
            log.info("router %s:%d assigned %s", *self.router, event.lease.describe())
        elif event.old.prefix114 != event.lease.prefix114:
            log.warning("NAT mapping changed: %s replaces %s", addr.format_address(event.lease.address),
                        addr.format_address(event.old.address))
        else:
            log.info("routes changed: %s", event.lease.describe())
        self.applied(lambda: self.applier.apply(event.lease, event.old))
        status = f"STATUS=address {addr.format_address(event.lease.address)} from router {self.router[0]}"
        service.notify(status if self.ready else f"READY=1\n{status}")
        self.ready = True

    def change_hook(self, script: str | None) -> None:
        """A new -x hook (SIGHUP): the old one withdraws its offers, the new one gets the current lease."""
        hook = self.applier.hook
        if script == hook.script:
            return
        if script and shutil.which(script) is None:
            log.error("-x %s: no such executable file; keeping the hook %s", script, hook.script)
            return
        if hook.offered:
            hook.withdraw()
        hook.script = script
        if self.core.lease is not None:
            hook.offer(self.core.lease)

    @staticmethod
    def applied(change) -> None:
        try:
            change()
        except netlink.NetlinkSetupError as exc:
            log.error("%s", exc.strerror or exc)


def run_peer(settings: PeerSettings, prog: str = "6bed4peer", reload: Reload | None = None) -> int:
    config = settings.config
    if settings.hook and shutil.which(settings.hook) is None:
        return cliutil.fail(prog, f"-x {settings.hook}: no such executable file")
    with contextlib.ExitStack() as cleanup:
        try:
            try:
                sock = open_udp(*settings.bind)
            except UdpError as exc:
                if exc.errno == errno.EADDRINUSE:  # the router's hint does not fit here
                    raise UdpError(exc.errno, f"cannot bind UDP {settings.bind[0]}:{settings.bind[1]}: "
                                              "address already in use (another 6bed4peer running?)") from None
                raise
            cleanup.callback(sock.close)
            tun, setup = undo.open_tun("peer", settings.tun_name, settings.create_tun, cleanup)
            configure_tun(setup)
            hook = Hook(settings.hook)
            applier = LeaseApplier(setup, config, hook)
            watch = netlink.LinkWatch.tun_and_uplink(setup, config.router_ipv4, restore=applier.install)
            cleanup.callback(watch.close)
        except (UdpError, undo.UndoBusy, TunError, netlink.NetlinkSetupError) as exc:
            return cliutil.fail(prog, exc.strerror or str(exc))
        except PermissionError as exc:
            return cliutil.fail(prog, f"{exc.filename}: permission denied (run as root or with CAP_NET_ADMIN)")

        core = PeerCore(config)
        local = sock.getsockname()
        gateway = None
        if settings.lan:
            try:
                gateway = LanGateway.open(settings.lan, setup, cleanup, time.monotonic())
            except LanError as exc:
                return cliutil.fail(prog, str(exc))
            watch.add(gateway.lan_setup.index, f"the LAN interface {settings.lan.interface}",
                      "the LAN is cut off until it is up again", gateway.restore)
        try:
            fast = fastpath.start(settings.fast_path, lambda: fastpath.peer(config.router, local, tun.name,
                                                                            setup.record), log)
        except fastpath.FastPathError as exc:
            return cliutil.fail(prog, f"--fast-path on: {exc}")
        if fast is not None:
            fastpath.close_on_exit(cleanup, fast, log)

        def counters():
            return core.counters.plus(fast.counters()) if fast else core.counters

        def info() -> dict[str, str]:
            lease = core.lease
            return {"router": "%s:%d" % config.router, "address": addr.format_address(lease.address) if lease else "",
                    "fast_path": str(fast.attachment) if fast else "off"}

        collectors = [CountersCollector("sixbed4_peer", counters, info)]
        if fast is not None:
            collectors.append(fast.metrics_collector("sixbed4_peer"))
        if gateway is not None:
            collectors.append(CountersCollector("sixbed4_peer_lan", gateway.advertiser.counters,
                                                events=("rs_received", "ra_sent"),
                                                reasons=("nd_bad_hoplimit", "nd_malformed", "send_error")))

        # This thread keeps CAP_NET_ADMIN after the switch to --user: it re-addresses on a
        # corrective RA and passes the capability on to the hook (and, on a LAN, to the DHCPv6 server).
        try:
            keep = settings.lan.capabilities if settings.lan else (service.CAP_NET_ADMIN,)
            service.serve_then_drop(settings.metrics, collectors, settings.user, cleanup, keep)
        except (MetricsError, service.PrivilegeError) as exc:
            return cliutil.fail(prog, str(exc))
        cleanup.callback(hook.withdraw)  # del-offers first; then undo() removes addresses and routes
        datapath = Datapath(sock, tun, core)
        cleanup.callback(datapath.close)
        log.info("soliciting router %s:%d from UDP %s:%d via %s", *config.router, *local, tun.name)
        if watch.uplink is None:
            log.warning("no route to the router %s yet: not watching an uplink", config.router_ipv4)

        service.handle_signals(SIGNALS, stop=datapath.stop, reload=reload)
        ticker = Ticker(core, sock, applier, gateway)
        service.notify(f"STATUS=soliciting router {config.router_ipv4}")  # READY=1 comes with the address
        cleanup.enter_context(service.feeding_watchdog(datapath))
        on_tick = service.reloading(reload, settings, ticker, LIVE_SETTINGS,
                                    apply=lambda running: ticker.change_hook(running.hook), ready=lambda: ticker.ready)
        if fast is not None:  # the programs follow the lease, the route to the router and the TUN device's state
            follower = fastpath.PeerFollower(fast, core, settings.bind[0], log)
            on_tick = fast.following_tun(follower.following(on_tick), lambda: setup.index not in watch.down)
        try:
            ticker(datapath.clock())  # the first RS now, not a tick later
            datapath.run(on_tick=watch.guarding(on_tick), tick=TICK)
        except (DatapathError, netlink.LinkGone) as exc:
            log.error("%s; exiting", watch.explain(exc))
            return 1
        finally:
            events = {"rs_sent": core.rs_sent, "ra_received": core.ra_received,
                      "keepalives_sent": core.keepalives_sent, "readdressed": core.readdressed}
            events.update((k, v) for k, v in counters().snapshot().items() if v)
            log.info("counters: %s", " ".join(f"{k}={v}" for k, v in events.items()))
        return 0
