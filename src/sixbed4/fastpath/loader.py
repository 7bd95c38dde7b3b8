"""Load, configure and attach a fast path; read its counters.

`RouterFastPath.load()` / `PeerFastPath.load()` build (or take from the cache)
and load the programs of router.bpf.c / peer.bpf.c; `configure()` writes what
they must know (prefix, addresses, devices) into their maps; `attach()` hooks
them to the uplink's ingress and the TUN device's egress.

From Linux 6.6 the hooks are tcx links, which live as long as this process
holds their file descriptors: close() (or the process's end, even by SIGKILL)
detaches them.  From 5.14 to 6.5 (Debian 12's 6.1) they are filters of tc's
clsact qdisc, and the programs are built for those kernels (COMPAT_5_10 in
common.bpf.h); a filter stays until it is removed, so each is written into the
daemon's undo record before it is added, and a killed daemon's are taken back
with its other changes.  Two daemons on one host each attach their own; a
program passes what is not its daemon's on to the next one (TCX_NEXT, which is
tc's TC_ACT_UNSPEC too).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ..core.router import RouterConfig
from ..io import netlink
from ..io.undo import UndoRecord
from . import build, libbpf

# tcx links; from here the programs also read skb->ip_summed (6.2) and decapsulate with
# bpf_skb_adjust_room's flags (6.3)
TCX_KERNEL = (6, 6)
# below TCX_KERNEL: clsact filters, the programs built with COMPAT_5_10 (they need 5.10: bpf_redirect_neigh), and
# the undo record the filters are written into, which needs 5.14 (SO_NETNS_COOKIE; Debian 11's 5.10 has none)
MIN_KERNEL = (5, 14)
# Tests set it (e.g. to 5.14) to run the path of an older kernel on a newer one.
KERNEL_OVERRIDE = "SIXBED4_FASTPATH_KERNEL"

_ZERO_KEY = bytes(4)
FP_MASQUERADE, FP_TUN_DOWN, FP_LEASED = 1, 2, 4  # enum fp_flags in common.bpf.h
# enum fp_counter in common.bpf.h; the first seven are the cores' counters too (core/stats.py):
# Counters.plus adds them up
COUNTER_NAMES = ("udp_in", "udp_in_bytes", "to_tun", "relayed", "tun_in", "tun_in_bytes", "to_udp",
                 "udp_passed", "tun_passed")


class FastPathError(RuntimeError):
    """The fast path cannot be used here; str() says why, in one line, for the log."""


@dataclass(frozen=True)
class Attachment:
    """What was attached where, for the log."""

    uplink: str
    tun: str
    hooks: str  # e.g. "tcx links 12, 13"
    inbound: str  # what the uplink's program takes, e.g. "peers -> router"
    outbound: str

    def __str__(self) -> str:
        return (f"tc ingress of {self.uplink} ({self.inbound}) and tc egress of {self.tun} ({self.outbound}), "
                f"{self.hooks}")


def kernel_release() -> tuple[int, int]:
    """The running kernel's version (or what KERNEL_OVERRIDE says)."""
    release = os.environ.get(KERNEL_OVERRIDE) or os.uname().release
    try:
        major, minor = release.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return (0, 0)


class TcxHooks:
    """Linux 6.6+: tcx links; a link goes with its file descriptor, also when the process is killed."""

    def attach(self, prog_fd: int, device: str, ingress: bool, name: str) -> int:
        hook = libbpf.BPF_TCX_INGRESS if ingress else libbpf.BPF_TCX_EGRESS
        return libbpf.attach_tcx(prog_fd, ifindex(device), hook, f"attaching {name} to {device}")

    def detach(self, link: int) -> None:
        os.close(link)

    def describe(self, links: list[int]) -> str:
        return "tcx links " + ", ".join(str(libbpf.object_id(fd)) for fd in links)


class ClsactHooks:
    """Linux 5.14-6.5: filters of the clsact qdisc, in the daemon's undo record (they outlive a killed process)."""

    def __init__(self, record: UndoRecord | None):
        self.record = record

    def attach(self, prog_fd: int, device: str, ingress: bool, name: str) -> tuple[netlink.InterfaceSetup, dict]:
        if self.record is None:  # a filter a kill left would go on taking packets, and nothing would remove it
            raise FastPathError("the kernel needs tc filters (before 6.6), which a daemon without an undo record "
                                "(/run/sixbed4) could leave behind")
        setup = netlink.InterfaceSetup(device, self.record)
        try:
            spec = setup.add_bpf_filter(netlink.TC_INGRESS if ingress else netlink.TC_EGRESS, prog_fd,
                                        f"{name}:[{libbpf.object_id(prog_fd)}]")
        except BaseException:
            self.detach((setup, None))
            raise
        return setup, spec

    def detach(self, hooked: tuple[netlink.InterfaceSetup, dict | None]) -> None:
        setup = hooked[0]
        setup.undo()  # the filter, and the clsact qdisc if it added that and nothing else uses it
        setup.close()

    def describe(self, filters: list[tuple[netlink.InterfaceSetup, dict]]) -> str:
        return "tc filters (clsact) pref " + ", ".join(str(spec["prio"]) for _, spec in filters)


def default_ttl() -> int:
    """What a UDP socket sends with unless told otherwise."""
    return int(Path("/proc/sys/net/ipv4/ip_default_ttl").read_text())


class FastPath:
    """Two loaded programs (uplink_in, tun_out) and their maps; attached once attach() ran.

    A subclass names its source and the layout of its `config` map (CONFIG, a
    struct format, and FIELDS, the names of its fields in order).
    """

    SOURCE: Path
    CONFIG: struct.Struct
    FIELDS: tuple[str, ...]
    INBOUND = OUTBOUND = ""

    def __init__(self, obj: libbpf.BpfObject, hooks: TcxHooks | ClsactHooks):
        self._obj = obj
        self.hooks = hooks
        self.uplink_in = obj.program_fd("uplink_in")
        self.tun_out = obj.program_fd("tun_out")
        self._config = obj.map_fd("config")
        self._counters = obj.map_fd("counters")
        self._cpus = libbpf.possible_cpus()
        self._fields: dict[str, object] = {}
        self._hooked: list = []  # [uplink's, TUN device's], as self.hooks attached them
        self.attachment: Attachment | None = None

    @classmethod
    def load(cls, record: UndoRecord | None = None):
        """Build and load the programs for the running kernel; FastPathError says why not.

        `record`: the daemon's undo record, where filters are written before
        they are added (kernels before TCX_KERNEL).
        """
        kernel = kernel_release()
        if kernel < MIN_KERNEL:
            raise FastPathError("kernel %s is too old (needs %d.%d)" % (os.uname().release, *MIN_KERNEL))
        modern = kernel >= TCX_KERNEL
        try:
            elf = build.build(cls.SOURCE, () if modern else ("COMPAT_5_10",))
        except build.BuildError as exc:
            raise FastPathError(str(exc)) from None
        try:
            return cls(libbpf.BpfObject(elf), TcxHooks() if modern else ClsactHooks(record))
        except libbpf.BpfError as exc:
            if exc.errno == errno.ENOENT and "libbpf" in str(exc):
                raise FastPathError(str(exc)) from None
            if exc.errno == errno.EPERM:
                raise FastPathError("no permission to load BPF programs (needs CAP_BPF, CAP_PERFMON and "
                                    "CAP_NET_ADMIN)") from None
            raise FastPathError(f"the kernel refused the programs: {exc}") from None

    # --- maps -------------------------------------------------------------------

    def _update_config(self, **changes) -> None:
        """Change fields of the programs' configuration (written only when something changed)."""
        wanted = {**self._fields, **changes}
        if wanted != self._fields:
            self._fields = wanted
            libbpf.map_update(self._config, _ZERO_KEY, self.CONFIG.pack(*(wanted[name] for name in self.FIELDS)))

    def following_tun(self, on_tick, tun_is_up):
        """A timer tick that tells the programs whether the TUN device is up, then calls `on_tick`.

        While it is down the programs leave packets for it to the Python path, which
        counts them (tun_down) as it does when the fast path is off.
        """

        def tick(now: float) -> None:
            flags = self._fields["flags"]
            self._update_config(flags=flags & ~FP_TUN_DOWN | (0 if tun_is_up() else FP_TUN_DOWN))
            on_tick(now)

        return tick

    def counters(self) -> dict[str, int]:
        """The programs' counters, summed over the CPUs."""
        size = 8 * len(COUNTER_NAMES)
        raw = libbpf.map_lookup(self._counters, _ZERO_KEY, size * self._cpus) or bytes(size * self._cpus)
        totals = [0] * len(COUNTER_NAMES)
        for cpu in range(self._cpus):
            for index, value in enumerate(struct.unpack_from(f"={len(COUNTER_NAMES)}Q", raw, cpu * size)):
                totals[index] += value
        return dict(zip(COUNTER_NAMES, totals))

    def metrics_collector(self, namespace: str) -> "FastPathCollector":
        return FastPathCollector(namespace, self)

    # --- hooks ------------------------------------------------------------------

    def attach(self, uplink: str, tun: str) -> Attachment:
        """Hook the programs to the devices (by name); FastPathError says what failed."""
        _require_ethernet(uplink)
        try:
            for prog, device, ingress, name in ((self.uplink_in, uplink, True, "uplink_in"),
                                                (self.tun_out, tun, False, "tun_out")):
                self._hooked.append(self.hooks.attach(prog, device, ingress, name))
        except (libbpf.BpfError, OSError) as exc:
            self.detach()
            if exc.errno == errno.EINVAL and isinstance(self.hooks, TcxHooks):
                raise FastPathError(f"{exc} (the kernel has no tcx hooks?)") from None
            raise FastPathError(str(exc)) from None
        return self._attached_to(uplink, tun)

    def _attached_to(self, uplink: str, tun: str) -> Attachment:
        self.attachment = Attachment(uplink, tun, self.hooks.describe(self._hooked), self.INBOUND, self.OUTBOUND)
        return self.attachment

    def move_uplink(self, uplink: str) -> Attachment:
        """Take datagrams from another uplink (the route to the router moved there); FastPathError if it cannot."""
        if self.attachment is None or uplink == self.attachment.uplink:
            return self.attachment
        _require_ethernet(uplink)
        try:
            hooked = self.hooks.attach(self.uplink_in, uplink, True, "uplink_in")
        except (libbpf.BpfError, OSError) as exc:
            raise FastPathError(str(exc)) from None
        self.hooks.detach(self._hooked[0])
        self._hooked[0] = hooked
        return self._attached_to(uplink, self.attachment.tun)

    def detach(self) -> None:
        while self._hooked:
            self.hooks.detach(self._hooked.pop())
        self.attachment = None

    def test_run(self, program: int, frame: bytes, ifindex: int = 0) -> tuple[int, bytes]:
        """Run a program on one Ethernet frame (BPF_PROG_TEST_RUN): its verdict (signed) and the frame after.

        `ifindex`: the device the frame arrives on (else the loopback device).
        """
        context = bytes(40) + struct.pack("=I", ifindex) if ifindex else None  # struct __sk_buff up to ifindex
        verdict, out = libbpf.test_run(program, frame, context)
        return (verdict - (1 << 32) if verdict >= 1 << 31 else verdict), out

    def close(self) -> None:
        self.detach()
        self._obj.close()


class RouterFastPath(FastPath):
    """router.bpf.c: peers -> router on the uplink, router -> peers on the TUN device."""

    SOURCE = build.ROUTER
    CONFIG = struct.Struct("=8s4s4s4s2sBB8sIII")  # struct fp_config
    FIELDS = ("prefix", "ipv4", "bind", "source", "port", "ttl", "flags", "router_iid", "tun_ifindex",
              "uplink_ifindex", "l2_len")
    INBOUND, OUTBOUND = "peers -> router", "router -> peers"

    def __init__(self, obj: libbpf.BpfObject, hooks: TcxHooks | ClsactHooks):
        super().__init__(obj, hooks)
        self._host_ipv4s = obj.map_fd("host_ipv4s")
        self._masq_hosts = obj.map_fd("masq_hosts")

    def configure(self, config: RouterConfig, bind_ipv4: bytes, source_ipv4: bytes, tun_ifindex: int,
                  uplink_ifindex: int, ttl: int | None = None, l2_len: int = 0) -> None:
        """What the programs must know of this router.

        `bind_ipv4` is the address the socket is bound to (0.0.0.0: any of the
        host's), `source_ipv4` the source of its datagrams to peers (the bound
        address, or the uplink's); `ttl` what the socket sends with (default: the sysctl);
        `l2_len` 14 only for BPF_PROG_TEST_RUN (which puts an Ethernet header
        in front of what would reach the TUN device's egress bare).
        """
        for key in libbpf.map_keys(self._masq_hosts, 16):
            libbpf.map_delete(self._masq_hosts, key)
        for rule in config.masquerade:
            libbpf.map_update(self._masq_hosts, rule.host, b"\x01")
        self._update_config(prefix=config.prefix, ipv4=config.ipv4, bind=bind_ipv4, source=source_ipv4,
                            port=struct.pack("!H", config.port), ttl=default_ttl() if ttl is None else ttl,
                            flags=FP_MASQUERADE if config.masquerade else 0, router_iid=config.address[8:],
                            tun_ifindex=tun_ifindex, uplink_ifindex=uplink_ifindex, l2_len=l2_len)

    def set_host_ipv4s(self, addresses) -> None:
        """The host's own IPv4 addresses (packed, 4 bytes each): never peer endpoints."""
        wanted = {bytes(a) for a in addresses}
        present = set(libbpf.map_keys(self._host_ipv4s, 4))
        for address in wanted - present:
            libbpf.map_update(self._host_ipv4s, address, b"\x01")
        for address in present - wanted:
            libbpf.map_delete(self._host_ipv4s, address)


class PeerFastPath(FastPath):
    """peer.bpf.c: router -> peer on the uplink, peer -> router on the TUN device.

    Until `set_lease()` gave a /114 and `set_route()` the socket's address as
    it leaves the host, the programs hand everything to the Python peer.
    """

    SOURCE = build.PEER
    CONFIG = struct.Struct("=16s4s4s2s2sBB2xIII")  # struct peer_config
    FIELDS = ("prefix", "router", "local", "router_port", "local_port", "ttl", "flags", "tun_ifindex",
              "uplink_ifindex", "l2_len")
    INBOUND, OUTBOUND = "router -> peer", "peer -> router"

    def configure(self, router: tuple[bytes, int], local_port: int, tun_ifindex: int, ttl: int | None = None,
                  l2_len: int = 0) -> None:
        """The router's IPv4 address and port, the socket's port, the TUN device (`l2_len`: see RouterFastPath)."""
        self._update_config(prefix=bytes(16), router=router[0], local=bytes(4), router_port=struct.pack("!H", router[1]),
                            local_port=struct.pack("!H", local_port), ttl=default_ttl() if ttl is None else ttl,
                            flags=0, tun_ifindex=tun_ifindex, uplink_ifindex=0, l2_len=l2_len)

    def set_lease(self, prefix114: bytes | None) -> None:
        """The /114 the router gave (lanid 0), or None: no lease, everything to the Python peer."""
        flags = self._fields["flags"] & ~FP_LEASED
        self._update_config(prefix=prefix114 or bytes(16), flags=flags | (FP_LEASED if prefix114 else 0))

    def set_route(self, local_ipv4: bytes | None, uplink_ifindex: int) -> None:
        """The address the socket's datagrams to the router leave from, and the interface (None: no route)."""
        self._update_config(local=local_ipv4 or bytes(4), uplink_ifindex=uplink_ifindex if local_ipv4 else 0)


def _require_ethernet(uplink: str) -> None:
    """The programs read Ethernet frames on the uplink (ARPHRD_ETHER); FastPathError otherwise."""
    try:
        kind = int(Path(f"/sys/class/net/{uplink}/type").read_text())
    except (OSError, ValueError):
        raise FastPathError(f"no device {uplink}") from None
    if kind != 1:
        raise FastPathError(f"uplink {uplink} is not an Ethernet device (ARPHRD {kind})")


def ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise FastPathError(f"no device {name}") from None


class FastPathCollector:
    """`<namespace>_fastpath_total{event=...}`: what the kernel took, and what it left to the Python path.

    The daemon's own counters (udp_in, to_tun, ...) already include the
    kernel's; these say how much of them it was.
    """

    reasons = ()  # it drops nothing: every drop is the Python daemon's, under its reason
    HELP = "packets the kernel fast path handled (udp_in, to_tun, relayed, tun_in, to_udp, ...) or left to " \
           "the Python path (udp_passed, tun_passed)"

    def __init__(self, namespace: str, fast: FastPath):
        self.namespace, self.fast = namespace, fast

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(f"{self.namespace}_fastpath", self.HELP, labels=["event"])
        for name, value in self.fast.counters().items():
            family.add_metric([name], value)
        yield family
