"""The router daemon: bind the socket, set up the TUN device, pump, clean up."""

from __future__ import annotations

import contextlib
import logging
import signal
from dataclasses import dataclass

from .. import cliutil
from ..anycast.health import AnnounceError, Health
from ..anycast.options import AnycastSettings
from ..config import Reload
from ..core import addr
from ..core.router import RouterConfig, RouterCore
from ..fastpath import control as fastpath
from ..io import netlink, undo
from ..io import service
from ..io.datapath import Datapath, DatapathError
from ..io.hostaddr import HostIPv4Watch, host_ipv4s
from ..io.metrics import CountersCollector, MetricsError
from ..io.tun import TunError
from ..io.udp import UdpError, open_udp

log = logging.getLogger("6bed4router")

TUN_MTU = 1280

# What each signal does (the man page's SIGNALS section is made from this table).
SIGNALS = {
    signal.SIGTERM: ("stop", "stop cleanly: detach the fast path, remove the TUN device the router created "
                             "(with -d: the addresses and route the router put on the device), exit 0; with "
                             "--anycast-table, withdraw first and go on serving --anycast-drain seconds; a second "
                             "signal stops at once"),
    signal.SIGINT: ("stop", "the same as SIGTERM"),
    signal.SIGHUP: ("reload", "read the --config file again; a new log-level takes effect at once, without dropping "
                              "a packet; any other changed setting is logged and takes effect at the next start"),
    signal.SIGABRT: (None, "what systemd's watchdog sends once the router stopped saying WATCHDOG=1, its data path "
                           "stalled (see ENVIRONMENT; /ready says 503 \"data path stalled for N s\" meanwhile): "
                           "every thread's Python traceback goes to stderr, then the process ends as by SIGKILL"),
    signal.SIGKILL: (None, "the kernel removes the TUN device the router created, with its addresses and routes "
                           "(the --anycast-table announcement too, which BIRD then withdraws), and the fast "
                           "path's tcx links, so a restart works at once; with -d the router's addresses, route and "
                           "device settings stay, and before Linux 6.6 the fast path's tc filters, until the next "
                           "start or 6bed4 take-back router (the unit's ExecStopPost=) takes them back (see FILES: "
                           "the undo record)"),
}


@dataclass(frozen=True)
class RouterSettings:
    config: RouterConfig
    bind: tuple[str, int]
    tun_name: str = "6bed4"
    create_tun: bool = True
    prefix_route: bool = True
    metrics: tuple[str, int] | None = None
    user: str | None = None
    proxy_nd: str | None = None  # uplink on which to answer Neighbor Solicitations for the /64
    fast_path: str = "auto"  # the kernel fast path: auto, on, off
    uplink: str | None = None  # where datagrams arrive (default: the interface that has or routes -l)
    anycast: AnycastSettings | None = None  # announce through a BGP daemon while serving


def configure_tun(setup: netlink.InterfaceSetup, config: RouterConfig, prefix_route: bool) -> None:
    """Addresses as the C router: fe80:: and the router's global address; the /64 routed in.

    Those found on the device already (-d: a device someone else addressed, or a killed
    router's without its undo record) are adopted: a clean stop removes them too.
    """
    setup.set_sysctl("addr_gen_mode", "1")  # no kernel-chosen link-local address
    setup.set_sysctl("accept_ra", "0")
    setup.set_sysctl("autoconf", "0")
    setup.link_up(TUN_MTU)
    setup.add_address("fe80::", 64, prefix_route=True, adopt=True)
    setup.add_address(addr.format_address(config.address), 128, adopt=True)
    if prefix_route:
        setup.add_route(addr.format_address(config.prefix + bytes(8)), 64, adopt=True)


class NotableEvents:
    """Log what an operator should know, at most once a minute per kind, never per packet."""

    INTERVAL = 60.0

    def __init__(self, core: RouterCore):
        self.core = core
        self.seen = {"rate_limit_hits": 0, "corrective_ra_sent": 0}
        self.next_report = 0.0

    def __call__(self, now: float) -> None:
        if now < self.next_report:
            return
        counters = self.core.counters
        current = {"rate_limit_hits": self.core.rate_limit_hits, "corrective_ra_sent": counters.corrective_ra_sent}
        news = {key: current[key] - self.seen[key] for key in current if current[key] > self.seen[key]}
        if not news:
            return
        if "rate_limit_hits" in news:
            log.warning("rate limits suppressed %d replies (RS floods or errors); see the drops metric",
                        news["rate_limit_hits"])
        if "corrective_ra_sent" in news:
            log.info("sent %d corrective RAs to peers whose NAT mapping changed", news["corrective_ra_sent"])
        self.seen = current
        self.next_report = now + self.INTERVAL


def _nonzero(counters: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counters.items() if v)


def _start_proxy_nd(uplink: str, config: RouterConfig, cleanup: contextlib.ExitStack):
    """The proxy ND responder in a daemon thread of its own (its socket is not the datapath's)."""
    from ..io.proxynd import ProxyError, ProxyResponder

    try:
        responder = ProxyResponder(uplink, config.prefix)
        responder.open()
    except ProxyError as exc:
        return f"--proxy-nd {uplink}: {exc.strerror or exc}"
    responder.start_thread()

    def stop() -> None:
        responder.close()
        log.info("proxy ND counters: %s", responder.summary())

    cleanup.callback(stop)
    return responder


def run_router(settings: RouterSettings, prog: str = "6bed4router", reload: Reload | None = None) -> int:
    config = settings.config
    with contextlib.ExitStack() as cleanup:
        try:
            sock = open_udp(*settings.bind)
            cleanup.callback(sock.close)
            tun, setup = undo.open_tun("router", settings.tun_name, settings.create_tun, cleanup)
            configure_tun(setup, config, settings.prefix_route)
            listen = addr.format_ipv4(config.ipv4)
            watch = netlink.LinkWatch.tun_and_uplink(setup, listen)
            cleanup.callback(watch.close)
            health = Health.for_router(config, settings.anycast, setup, watch)
            cleanup.callback(health.close)
        except (UdpError, undo.UndoBusy, TunError, netlink.NetlinkSetupError) as exc:
            return cliutil.fail(prog, exc.strerror or str(exc))
        except PermissionError as exc:
            return cliutil.fail(prog, f"{exc.filename}: permission denied (run as root or with CAP_NET_ADMIN)")

        collectors = []
        if settings.proxy_nd:
            proxy = _start_proxy_nd(settings.proxy_nd, config, cleanup)
            if isinstance(proxy, str):
                return cliutil.fail(prog, proxy)
            collectors.append(proxy.metrics_collector())
            watch.add(proxy.index, f"the proxy ND interface {settings.proxy_nd}",
                      "Neighbor Solicitations on it go unanswered until it is up again")
            watch.add_thread(proxy.thread, "the proxy ND responder")

        core = RouterCore(config)
        try:
            fast = fastpath.start(settings.fast_path, lambda: fastpath.router(
                config, settings.bind, tun.name, settings.uplink or watch.uplink, host_ipv4s, setup.record), log)
        except fastpath.FastPathError as exc:
            return cliutil.fail(prog, f"--fast-path on: {exc}")
        if fast is not None:
            fastpath.close_on_exit(cleanup, fast, log)
            collectors.append(fast.metrics_collector("sixbed4_router"))

        def on_host_ipv4s(addresses) -> None:
            core.set_host_ipv4s(addresses)
            if fast is not None:
                fast.set_host_ipv4s(addresses)

        def counters():
            return core.counters.plus(fast.counters()) if fast else core.counters

        try:
            host_watch = HostIPv4Watch(on_host_ipv4s)
            host_watch.start()
        except OSError as exc:
            return cliutil.fail(prog, f"cannot read the host's IPv4 addresses: {exc}")
        cleanup.callback(host_watch.close)
        prefix_text = addr.format_address(config.prefix + bytes(8))
        info = {"prefix": f"{prefix_text}/64", "address": addr.format_address(config.address),
                "fast_path": str(fast.attachment) if fast else "off"}
        collectors.append(CountersCollector("sixbed4_router", counters, lambda: info, lambda: core.rate_limit_hits))
        try:
            service.serve_then_drop(settings.metrics, collectors, settings.user, cleanup, ready=health.report)
        except (MetricsError, service.PrivilegeError) as exc:
            return cliutil.fail(prog, str(exc))
        datapath = Datapath(sock, tun, core)
        cleanup.callback(datapath.close)
        health.follow(datapath)
        log.info(
            "serving %s/64 on UDP %s:%d via %s; router address %s",
            prefix_text, *settings.bind, tun.name, addr.format_address(config.address),
        )
        if config.routes:
            ra, corrective = config.ra_sizes
            log.info("RAs carry %d -R route(s): %d bytes (%d corrective), %.1fx a 48-byte Router Solicitation",
                     len(config.routes), ra, corrective, ra / 48)
        if watch.uplink is None:
            log.warning("no interface has or routes %s: not watching an uplink", listen)

        service.handle_signals(SIGNALS, stop=lambda: health.drain(datapath.stop), reload=reload)
        service.notify(f"READY=1\nSTATUS=serving {prefix_text}/64 on UDP {settings.bind[0]}:{settings.bind[1]}")
        cleanup.enter_context(service.feeding_watchdog(datapath))
        try:
            health.update()
            on_tick = service.reloading(reload, settings, NotableEvents(core))
            if fast is not None:  # the programs leave packets for a TUN device set down to the Python path
                on_tick = fast.following_tun(on_tick, lambda: setup.index not in watch.down)
            datapath.run(on_tick=watch.guarding(health.guarding(on_tick)))
        except (DatapathError, netlink.LinkGone, AnnounceError) as exc:
            log.error("%s; exiting", watch.explain(exc))
            return 1
        finally:
            log.info("counters: %s", _nonzero(counters().snapshot()))
        return 0
