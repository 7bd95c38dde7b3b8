"""Load, configure and attach the fast path; read its counters.

`FastPath.load()` builds (or takes from the cache) and loads the object;
`configure()` writes what the programs must know (prefix, addresses, devices)
into their maps; `attach()` hooks them to the uplink's ingress and the TUN
device's egress as tcx links.  The links live as long as this process holds
their file descriptors: close() (or the process's end, even by SIGKILL)
detaches them.  Two routers on one host each attach their own links; a
program passes what is not its router's on to the next one (TCX_NEXT).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ..core.router import RouterConfig
from . import build, libbpf

MIN_KERNEL = (6, 6)  # tcx links; bpf_skb_adjust_room's decapsulation flags came in 6.3

# struct fp_config and enum fp_counter in sixbed4.bpf.c
_CONFIG = struct.Struct("=8s4s4s4s2sBB8sIII")
_ZERO_KEY = bytes(4)
FP_MASQUERADE, FP_TUN_DOWN = 1, 2  # enum fp_flags
# the first seven are RouterCore's counters too (core/stats.py): Counters.plus adds them up
COUNTER_NAMES = ("udp_in", "udp_in_bytes", "to_tun", "relayed", "tun_in", "tun_in_bytes", "to_udp",
                 "udp_passed", "tun_passed")


class FastPathError(RuntimeError):
    """The fast path cannot be used here; str() says why, in one line, for the log."""


@dataclass(frozen=True)
class Attachment:
    """What was attached where, for the log."""

    uplink: str
    tun: str
    links: tuple[int, ...]  # the kernel's ids of the tcx links

    def __str__(self) -> str:
        return (f"tc ingress of {self.uplink} (peers -> router) and tc egress of {self.tun} (router -> peers), "
                f"tcx links {', '.join(map(str, self.links))}")


def kernel_release() -> tuple[int, int]:
    release = os.uname().release
    try:
        major, minor = release.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return (0, 0)


class FastPath:
    """The loaded programs and their maps; attached once attach() ran."""

    def __init__(self, obj: libbpf.BpfObject):
        self._obj = obj
        self.uplink_in = obj.program_fd("uplink_in")
        self.tun_out = obj.program_fd("tun_out")
        self._config = obj.map_fd("config")
        self._host_ipv4s = obj.map_fd("host_ipv4s")
        self._masq_hosts = obj.map_fd("masq_hosts")
        self._counters = obj.map_fd("counters")
        self._cpus = libbpf.possible_cpus()
        self._links: list[int] = []
        self.attachment: Attachment | None = None

    @classmethod
    def load(cls) -> "FastPath":
        """Build and load the programs; FastPathError says why not."""
        if kernel_release() < MIN_KERNEL:
            raise FastPathError("kernel %s is too old (needs %d.%d: tcx links)" % (os.uname().release, *MIN_KERNEL))
        try:
            elf = build.build()
        except build.BuildError as exc:
            raise FastPathError(str(exc)) from None
        try:
            return cls(libbpf.BpfObject(elf))
        except libbpf.BpfError as exc:
            if exc.errno == errno.ENOENT and "libbpf" in str(exc):
                raise FastPathError(str(exc)) from None
            if exc.errno == errno.EPERM:
                raise FastPathError("no permission to load BPF programs (needs CAP_BPF, CAP_PERFMON and "
                                    "CAP_NET_ADMIN)") from None
            raise FastPathError(f"the kernel refused the programs: {exc}") from None

    # --- maps -------------------------------------------------------------------

    def configure(self, config: RouterConfig, bind_ipv4: bytes, source_ipv4: bytes, tun_ifindex: int,
                  uplink_ifindex: int, ttl: int | None = None, l2_len: int = 0) -> None:
        """What the programs must know of this router.

        `bind_ipv4` is the address the socket is bound to (0.0.0.0: any of the
        host's), `source_ipv4` the source of its datagrams to peers (the bound
        address, or the uplink's); `ttl` what the socket sends with (default: the sysctl);
        `l2_len` 14 only for BPF_PROG_TEST_RUN (which puts an Ethernet header
        in front of what would reach the TUN device's egress bare).
        """
        if ttl is None:
            ttl = int(Path("/proc/sys/net/ipv4/ip_default_ttl").read_text())
        self._config_fields = [config.prefix, config.ipv4, bind_ipv4, source_ipv4, struct.pack("!H", config.port), ttl,
                               FP_MASQUERADE if config.masquerade else 0, config.address[8:], tun_ifindex,
                               uplink_ifindex, l2_len]
        for key in libbpf.map_keys(self._masq_hosts, 16):
            libbpf.map_delete(self._masq_hosts, key)
        for rule in config.masquerade:
            libbpf.map_update(self._masq_hosts, rule.host, b"\x01")
        libbpf.map_update(self._config, _ZERO_KEY, _CONFIG.pack(*self._config_fields))

    def following_tun(self, on_tick, tun_is_up):
        """A timer tick that tells the programs whether the TUN device is up, then calls `on_tick`.

        While it is down the programs leave packets for it to the Python path, which
        counts them (tun_down) as it does when the fast path is off.
        """
        flags = 6  # index of the flags in the configuration

        def tick(now: float) -> None:
            wanted = self._config_fields[flags] & ~FP_TUN_DOWN | (0 if tun_is_up() else FP_TUN_DOWN)
            if wanted != self._config_fields[flags]:
                self._config_fields[flags] = wanted
                libbpf.map_update(self._config, _ZERO_KEY, _CONFIG.pack(*self._config_fields))
            on_tick(now)

        return tick

    def set_host_ipv4s(self, addresses) -> None:
        """The host's own IPv4 addresses (packed, 4 bytes each): never peer endpoints."""
        wanted = {bytes(a) for a in addresses}
        present = set(libbpf.map_keys(self._host_ipv4s, 4))
        for address in wanted - present:
            libbpf.map_update(self._host_ipv4s, address, b"\x01")
        for address in present - wanted:
            libbpf.map_delete(self._host_ipv4s, address)

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
        kind = _device_type(uplink)
        if kind != 1:
            raise FastPathError(f"uplink {uplink} is not an Ethernet device (ARPHRD {kind})")
        try:
            for prog, device, hook in ((self.uplink_in, uplink, libbpf.BPF_TCX_INGRESS),
                                       (self.tun_out, tun, libbpf.BPF_TCX_EGRESS)):
                index = _ifindex(device)
                self._links.append(libbpf.attach_tcx(prog, index, hook, f"attaching to {device}"))
        except (libbpf.BpfError, OSError) as exc:
            self.detach()
            if exc.errno == errno.EINVAL:
                raise FastPathError(f"{exc} (the kernel has no tcx hooks?)") from None
            raise FastPathError(str(exc)) from None
        self.attachment = Attachment(uplink, tun, tuple(libbpf.link_id(fd) for fd in self._links))
        return self.attachment

    def detach(self) -> None:
        while self._links:
            os.close(self._links.pop())
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


def _device_type(name: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{name}/type").read_text())
    except (OSError, ValueError):
        raise FastPathError(f"no device {name}") from None


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise FastPathError(f"no device {name}") from None


class FastPathCollector:
    """`<namespace>_fastpath_total{event=...}`: what the kernel took, and what it left to the Python path.

    The router's own counters (udp_in, to_tun, ...) already include the
    kernel's; these say how much of them it was.
    """

    reasons = ()  # it drops nothing: every drop is the Python router's, under its reason
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
