"""The `6bed4 host-setup` and `6bed4 proxy-nd` subcommands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .. import cliutil, config
from ..core import addr, hostplan
from ..io.metrics import MetricsError, parse_listen, serve_metrics

log = logging.getLogger("6bed4")

# What each signal does to `6bed4 proxy-nd` (also the man page's SIGNALS section).
PROXY_SIGNALS = {
    signal.SIGTERM: "proxy-nd: stop answering, close the packet socket, exit 0",
    signal.SIGINT: "proxy-nd: the same as SIGTERM",
}

HOST_SETUP_DESCRIPTION = """\
Prepare a host for 6bed4router, following the seed: IPv6 forwarding on the uplink,
the host's own addresses in the /64 moved off the uplink's /64 (as /112 on a dummy
interface, or /128 on the uplink or lo), the /64 no longer on-link on the uplink.
plan prints the equivalent ip/sysctl commands and changes nothing; apply makes the
changes (idempotently) and records the previous state; undo restores it exactly
(and says there is nothing to undo when there is no record).  The changes last
until the next reboot, and so does the record (in /run): at boot,
6bed4-host-setup.service runs apply with --config /etc/sixbed4/host-setup.toml."""

PROXY_DESCRIPTION = """\
Answer Neighbor Solicitations on the uplink for every 6bed4 peer address in the
/64 and for the host's own addresses moved off the uplink, with the uplink's MAC
address.  Needed when the upstream router treats the /64 as on-link instead of
routing it to this host.  Runs in the foreground until SIGINT/SIGTERM."""


def add_parsers(commands) -> None:
    p = commands.add_parser("host-setup", help="prepare the host's uplink for the router (plan/apply/undo)",
                            description=HOST_SETUP_DESCRIPTION,
                            usage=config.usage("6bed4 host-setup", "--uplink IF --prefix PREFIX/64",
                                               first="{plan,apply,undo}"),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("verb", choices=("plan", "apply", "undo"), help="plan: show; apply: change; undo: restore")
    p.add_argument("--uplink", metavar="IF", help="the interface toward the upstream router (e.g. eth0); required")
    p.add_argument("--prefix", metavar="PREFIX/64", help="the /64 the router serves; required")
    p.add_argument("--local", metavar="ADDR", action="append", default=[],
                   help="another own address of the host in the /64 (repeatable); those on the uplink are found "
                        "automatically")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dummy", metavar="NAME", default="dumbo0", action=_Dummy,
                       help="put the own addresses as /112 on this dummy interface (default: %(default)s)")
    where.add_argument("--on-uplink", dest="placement", action="store_const", const="uplink",
                       help="put the own addresses as /128 on the uplink instead")
    where.add_argument("--loopback", dest="placement", action="store_const", const="loopback",
                       help="put the own addresses as /128 on lo (the upstream reaches them via proxy ND "
                            "or a routed /64)")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                   help="move own addresses that are not in port-0 form (...:0000:xxxx) although they collide "
                        "with 6bed4 peers")
    p.add_argument("--state-file", metavar="PATH", type=Path, default=None,
                   help="where apply records the previous state for undo (default: /run/sixbed4/host-setup.json)")
    config.add_config_option(p)
    p.set_defaults(func=cmd_host_setup, placement="dummy")

    p = commands.add_parser("proxy-nd", help="answer Neighbor Discovery on the uplink for the 6bed4 /64",
                            description=PROXY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uplink", metavar="IF", required=True, help="the interface toward the upstream router")
    p.add_argument("--prefix", metavar="PREFIX/64", required=True, help="the /64 the router serves")
    p.add_argument("--local", metavar="ADDR", action="append", default=[],
                   help="also answer for this own address (repeatable); own addresses in the /64 on other "
                        "interfaces than the uplink are found automatically")
    p.add_argument("--metrics", metavar="HOST:PORT", type=parse_listen,
                   help="serve Prometheus metrics (sixbed4_proxynd_*) over HTTP, e.g. 127.0.0.1:9642")
    cliutil.add_logging_option(p)
    p.set_defaults(func=cmd_proxy_nd)


class _Dummy(argparse.Action):
    """--dummy NAME: the dummy interface's name, and that placement (so that it overrides a config file's)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.dummy = values
        namespace.placement = "dummy"


def _options(args: argparse.Namespace) -> hostplan.Options:
    if not (args.uplink and args.prefix):
        raise cliutil.UsageError("give --uplink IF and --prefix PREFIX/64 (on the command line or in the --config file)")
    prefix = addr.parse_prefix64(args.prefix)
    return hostplan.Options(uplink=args.uplink, prefix=prefix, local=tuple(args.local),
                            placement=args.placement, dummy=args.dummy, force=args.force)


def cmd_host_setup(args: argparse.Namespace) -> int:
    from . import apply as applier
    from . import inspect

    prog = "6bed4 host-setup"
    options = _options(args)
    state_path = args.state_file or applier.DEFAULT_STATE_FILE
    state = applier.StateFile(state_path, options.uplink, options.prefix_text)
    try:
        existing = state.load()
    except ValueError as exc:
        raise cliutil.UsageError(str(exc)) from None

    if args.verb == "undo":
        if not existing:
            print(f"nothing to undo: no host-setup record in {state_path}")
            return 0
        problems = applier.undo_steps(state.steps)
        for problem in problems:
            print(f"{prog}: could not undo {problem}", file=sys.stderr)
        if problems:
            return 1
        state.remove()
        print(f"restored {len(state.steps)} change(s) recorded in {state_path}")
        return 0

    try:
        host = inspect.host_state(options.uplink)
        plan = hostplan.compute_plan(host, options)
    except hostplan.PlanError as exc:
        raise cliutil.UsageError(str(exc)) from None
    sys.stdout.write(plan.render(options))
    if plan.errors:
        more = f" (and {len(plan.errors) - 1} more, see above)" if len(plan.errors) > 1 else ""
        return cliutil.fail(prog, f"refused, nothing changed: {plan.errors[0]}{more}")
    if args.verb == "plan":
        return 0
    if not plan.changes:
        print("nothing changed: the host is set up already" + (f" (undo record: {state_path})" if existing else ""))
        return 0
    try:
        result = applier.apply_plan(plan, state)
    except applier.DummyMissing as exc:
        raise cliutil.UsageError(f"{exc.strerror}; " + hostplan.dummy_missing_message(options)) from None
    except applier.ApplyError as exc:
        return cliutil.fail(prog, f"{exc.strerror} (the changes of this run were taken back)", 1)
    except PermissionError as exc:
        return cliutil.fail(prog, f"{exc.filename or exc}: permission denied (run as root)", 1)
    except OSError as exc:
        return cliutil.fail(prog, f"{exc.filename or ''} {exc.strerror or exc} (the changes of this run were taken back)".strip(), 1)
    if result.done:
        print(f"applied {len(result.done)} change(s); undo record in {state_path}")
    else:
        print("nothing changed: the host is set up already")
    return 0


def cmd_proxy_nd(args: argparse.Namespace) -> int:
    from ..io.proxynd import ProxyError, ProxyResponder

    prefix = addr.parse_prefix64(args.prefix)
    local = tuple(addr.parse_address(text) for text in args.local)
    for text, packed in zip(args.local, local):
        if packed[:8] != prefix:
            raise cliutil.UsageError(f"--local {text} is not inside {args.prefix}")
    cliutil.setup_logging(args.log_level)
    try:
        responder = ProxyResponder(args.uplink, prefix, local)
        responder.open()
    except ProxyError as exc:
        return cliutil.fail("6bed4 proxy-nd", exc.strerror or str(exc))
    server = None
    if args.metrics:
        try:
            server = serve_metrics(args.metrics, responder.metrics_collector())
        except MetricsError as exc:
            responder.close()
            return cliutil.fail("6bed4 proxy-nd", str(exc))

    def on_signal(signum, _frame):
        log.info("%s received, shutting down", signal.Signals(signum).name)
        responder.stop_event.set()

    for signum in PROXY_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        responder.run()
    finally:
        if server is not None:
            server.shutdown()
        responder.close()
        log.info("proxy ND counters: %s", responder.summary())
    return 0
