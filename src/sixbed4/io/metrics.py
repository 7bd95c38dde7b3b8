"""Prometheus metrics (`--metrics HOST:PORT`), read straight from the core's counters.

The cores count in plain ints on the hot path; this collector turns them into
metric families only when scraped, so metrics cost nothing per packet.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import CollectorRegistry

from ..core.stats import DROP_REASONS, Counters

log = logging.getLogger(__name__)

EVENT_HELP = {
    "udp_in": "datagrams received on the 6bed4 UDP socket",
    "udp_in_bytes": "bytes received on the 6bed4 UDP socket",
    "tun_in": "packets read from the TUN device",
    "tun_in_bytes": "bytes read from the TUN device",
    "to_tun": "packets written to the TUN device",
    "to_udp": "packets sent as datagrams from the TUN side",
    "relayed": "packets relayed from one peer to another",
    "keepalives": "empty keepalive datagrams",
    "rs_received": "Router Solicitations received",
    "ra_sent": "Router Advertisements sent",
    "corrective_ra_sent": "corrective Router Advertisements sent after a NAT mapping change",
    "ns_received": "Neighbor Solicitations received",
    "na_sent": "Neighbor Advertisements sent",
    "echo_replies": "ICMPv6 Echo Replies sent by the router itself",
    "icmp_errors_sent": "ICMPv6 errors sent (Time Exceeded)",
    "masqueraded": "packets whose address was rewritten by masquerading",
}


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT) for --metrics."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--metrics {text!r}: use HOST:PORT, e.g. 127.0.0.1:9640")
    return host.strip("[]") or "0.0.0.0", int(port)


class CountersCollector:
    """One daemon part's counters as metric families `<namespace>_<event>` and `<namespace>_drops{reason}`.

    `events` and `reasons` narrow the families to those the part can count
    (the proxy ND responder shares the Counters type but not most of its events).
    """

    def __init__(self, namespace: str, counters: Counters, info: Callable[[], dict[str, str]] | None = None,
                 rate_limit_hits: Callable[[], int] | None = None, events: Iterable[str] = Counters.EVENTS,
                 reasons: Iterable[str] = DROP_REASONS):
        self.namespace = namespace
        self.counters = counters
        self.info = info
        self.rate_limit_hits = rate_limit_hits
        self.events = tuple(events)
        self.reasons = tuple(reasons)

    def collect(self):
        ns = self.namespace
        for event in self.events:
            family = CounterMetricFamily(f"{ns}_{event}", EVENT_HELP.get(event, event))
            family.add_metric([], getattr(self.counters, event))
            yield family
        drops = CounterMetricFamily(f"{ns}_drops", "packets dropped, by reason", labels=["reason"])
        for reason in self.reasons:
            drops.add_metric([reason], self.counters.drops.get(reason, 0))
        yield drops
        if self.rate_limit_hits is not None:
            hits = CounterMetricFamily(f"{ns}_rate_limit_hits", "replies suppressed by rate limits")
            hits.add_metric([], self.rate_limit_hits())
            yield hits
        if self.info is not None:
            details = self.info()
            info = InfoMetricFamily(f"{ns}", "current configuration and addresses")
            info.add_metric([], details)
            yield info
            up = GaugeMetricFamily(f"{ns}_address_assigned", "1 when the daemon holds a 6bed4 address")
            up.add_metric([], 1 if details.get("address") else 0)
            yield up


class MetricsError(RuntimeError):
    pass


Readiness = Callable[[], tuple[bool, dict]]  # (ready, details), e.g. anycast.health.Health.report


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no line per scrape
        pass


def _with_readiness(metrics_app, ready: Readiness):
    """GET /ready: 200 and the details as JSON while ready, 503 otherwise; every other path: metrics."""

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/ready":
            return metrics_app(environ, start_response)
        ok, details = ready()
        body = (json.dumps(details, sort_keys=True) + "\n").encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(listen: tuple[str, int], *collectors: CountersCollector, ready: Readiness | None = None):
    """Start the HTTP exporter (and /ready, if given) in a background thread; returns the server (call its shutdown()).

    The server is ours rather than prometheus_client's start_http_server, which
    returns nothing to stop it with before 0.17 (Debian 12 has 0.16).
    """
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    app = make_wsgi_app(registry)
    if ready is not None:
        app = _with_readiness(app, ready)
    server_class = type("MetricsServer", (_Server,), {"address_family": socket.AF_INET6 if ":" in listen[0]
                                                       else socket.AF_INET})
    try:
        server = make_server(listen[0], listen[1], app, server_class, handler_class=_Quiet)
    except OSError as exc:
        raise MetricsError("metrics on %s:%d: %s" % (*listen, exc.strerror or exc)) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics%s", *listen, " and /ready" if ready else "")
    return server
