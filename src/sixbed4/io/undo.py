"""The undo record: a daemon's changes to the kernel, written down before each is made.

A daemon's clean stop takes back every address, route, proxy entry and sysctl
it changed (netlink.InterfaceSetup.undo).  A SIGKILL, an OOM kill or a crash
does not: those changes would stay for good, and the next start would find
them in place and take them for the host's own.  So each change is appended to
a file in /run/sixbed4 (one per daemon, TUN device and network namespace)
before it is made, and its removal after; the next start takes back what is
still outstanding (netlink.take_back) before it changes anything itself.

* The file is held open and locked (flock) while the daemon runs, so a second
  daemon for the same TUN device is refused instead of undoing a live one's
  changes; the kernel drops the lock when the holder dies, however it dies.
* A record counts only in the boot and network namespace that wrote it (/run
  is emptied at boot; a namespace's cookie is never reused): elsewhere its
  devices and sysctls are not the ones it names.
* One JSON object per line, appended with one write: a kill during a write
  leaves at most a torn last line, which is ignored (its change was not made
  yet).  Opened before the daemon drops to --user, so it stays writable.
* A clean stop empties the file (and removes it when allowed: after --user,
  /run/sixbed4 is root's).  A long run (a LAN renumbered at every NAT
  rebinding) does not grow it without end: past COMPACT_AFTER lines of history
  it is written anew with only the changes still in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
from pathlib import Path

from . import netlink
from .tun import Tun

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sixbed4")
FORMAT = 1
KINDS = ("sysctl", "link", "addr", "route", "neigh", "qdisc", "filter")
SO_NETNS_COOKIE = 71  # Linux 5.14
COMPACT_AFTER = 1000  # lines
_SYSCTL_KEY = re.compile(r"net\.ipv6\.conf\.[^/\s]+\.[a-z0-9_]+")


class UndoBusy(OSError):
    """Another live daemon holds the record: str() names it."""


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def netns_cookie() -> int:
    """The kernel's id of this network namespace, unique for the whole boot."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return int.from_bytes(probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def _file_name(daemon: str, inode: int, tun: str) -> str:
    """<daemon>-<netns inode>-<tun>.undo: one per daemon, TUN device and namespace (inodes are reused once a
    namespace is gone, hence the cookie inside); with "*" for daemon or tun, a glob pattern."""
    return f"{daemon}-{inode}-{tun}.undo"


def _this_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def record_path(directory: Path, daemon: str, tun: str) -> Path:
    return directory / _file_name(daemon, _this_netns(), tun)


def forget_namespace(name: str, directory: Path = RUN_DIR) -> None:
    """Remove the records of daemons in the named namespace (`ip netns`), which is about to be deleted: its
    devices and sysctls go with it, and a later namespace may get its inode."""
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return
    for path in directory.glob(_file_name("*", inode, "*")):
        path.unlink(missing_ok=True)


def valid_change(change) -> bool:
    """A record as InterfaceSetup writes it; anything else is not acted on."""
    if not isinstance(change, dict) or change.get("kind") not in KINDS or not isinstance(change.get("spec"), dict):
        return False
    if not isinstance(change.get("extra", {}), dict):
        return False
    device = change.get("device")
    if device is not None and not (isinstance(device, list) and len(device) == 2 and isinstance(device[0], str)
                                   and isinstance(device[1], int)):
        return False
    spec = change["spec"]
    if change["kind"] == "sysctl":
        key, old = spec.get("key"), spec.get("old")
        return isinstance(key, str) and _SYSCTL_KEY.fullmatch(key) is not None and isinstance(old, str)
    if change["kind"] == "qdisc":  # only the clsact qdisc, only on its device
        return device is not None and spec.keys() == {"index", "kind"} and spec["kind"] == "clsact" \
            and isinstance(spec["index"], int)
    if change["kind"] == "filter":
        return device is not None and spec.keys() == {"index", "parent", "prio", "handle", "name"} \
            and spec["parent"] in (netlink.TC_INGRESS, netlink.TC_EGRESS) and isinstance(spec["name"], str) \
            and all(isinstance(spec[key], int) for key in ("index", "prio", "handle"))
    return True


def outstanding(text: str, boot: str, netns: int) -> tuple[dict | None, list[dict]]:
    """(header, changes made and not taken back) of a record's text, oldest first.

    Nothing when the record is another boot's or namespace's, or not ours; a
    line that does not parse (a write cut short by a kill) is skipped.
    """
    lines = text.splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if (not isinstance(header, dict) or header.get("format") != FORMAT
            or header.get("boot") != boot or header.get("netns") != netns):
        return None, []
    changes: list[dict] = []
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if "made" in entry and valid_change(entry["made"]):
            changes.append(entry["made"])
        elif "gone" in entry and entry["gone"] in changes:
            index = len(changes) - 1 - changes[::-1].index(entry["gone"])
            del changes[index]
    return header, changes


class UndoRecord:
    """The open, locked record of one daemon (see the module's docstring)."""

    def __init__(self, path: Path, fd: int, left: list[dict], predecessor: dict | None):
        self.path = path
        self._fd = fd
        self.left_behind = left  # what a killed predecessor left: take back, then start()
        self.predecessor = predecessor
        self._open: list[dict] = []
        self._header: dict = {}
        self._lines = 0
        self._write_failed = False

    @classmethod
    def open(cls, daemon: str, tun: str, directory: Path = RUN_DIR) -> "UndoRecord":
        """Lock and read the record.  Raises UndoBusy (a live daemon has it) or OSError (no /run/sixbed4)."""
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        path = record_path(directory, daemon, tun)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder, _ = _contents(fd)
                finally:
                    os.close(fd)
                pid = f" (pid {holder['pid']})" if holder and "pid" in holder else ""
                raise UndoBusy(0, f"another {daemon}{pid} runs with the TUN device {tun} in this network "
                                  f"namespace; it holds {path}") from None
            if os.fstat(fd).st_nlink:
                break
            os.close(fd)  # its holder removed it at a clean stop while we waited: open the new one
        try:
            header, left = _contents(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, left, header)

    def take_back(self, daemon: str, tun: str) -> str | None:
        """Undo what the predecessor left; what to log about it, None if it left nothing."""
        if not self.left_behind:
            return None
        undone, gone = netlink.take_back(self.left_behind)
        self.left_behind = []
        pid = (self.predecessor or {}).get("pid", "?")
        return f"took back {undone} change(s) that a killed {daemon} (pid {pid}) left on {tun} ({gone} gone already)"

    def start(self, daemon: str) -> None:
        """A new record for this run: the predecessor's is taken back by now."""
        self._header = {"format": FORMAT, "daemon": daemon, "pid": os.getpid(), "boot": boot_id(),
                        "netns": netns_cookie()}
        self._rewrite()

    def made(self, change: dict) -> None:
        """Called before the change is made: a kill between the two leaves a record of nothing, which is harmless."""
        self._open.append(change)
        self._append({"made": change})

    def gone(self, change: dict) -> None:
        if change in self._open:
            self._open.remove(change)
        self._append({"gone": change})

    def _append(self, entry: dict) -> None:
        self._write([entry])
        if self._lines > COMPACT_AFTER + len(self._open):  # (self._open has the entry's change by now)
            self._rewrite()

    def _rewrite(self) -> None:
        """The header and the changes still in place, nothing else.  In one write after the truncation: only a
        kill between those two system calls could lose the record."""
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            self._failed(exc)
            return
        self._lines = 0
        self._write([self._header, *({"made": change} for change in self._open)])

    def _write(self, entries) -> None:
        text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries)
        try:
            os.write(self._fd, text.encode())
        except OSError as exc:
            self._failed(exc)
            return
        self._lines += text.count("\n")

    def _failed(self, exc: OSError) -> None:
        if not self._write_failed:  # once: the daemon runs on, only a kill would leave more behind
            self._write_failed = True
            log.warning("cannot write the undo record %s: %s; a killed daemon's changes will stay",
                        self.path, exc.strerror)

    def close(self) -> None:
        """After a clean stop: an empty record, gone if we may remove it; with changes still open, kept."""
        if self._fd < 0:
            return
        if not self._open:
            os.ftruncate(self._fd, 0)
            try:
                self.path.unlink()
            except OSError:
                pass  # after --user: /run/sixbed4 is root's; an empty record is as good as none
        os.close(self._fd)
        self._fd = -1


def _contents(fd: int) -> tuple[dict | None, list[dict]]:
    """outstanding() of the record behind `fd`, for this boot and namespace."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return outstanding(b"".join(chunks).decode(errors="replace"), boot_id(), netns_cookie())


def resume(daemon: str, tun: str, directory: Path = RUN_DIR) -> UndoRecord | None:
    """The daemon's record, after taking back what a killed predecessor left; None (logged) if there can be none.

    Raises UndoBusy when a live daemon holds it: starting would fight over its device.
    """
    if "/" in tun:
        return None  # not a device name: opening the TUN device says so next
    try:
        record = UndoRecord.open(daemon, tun, directory)
    except UndoBusy:
        raise
    except OSError as exc:
        log.warning("cannot keep an undo record in %s: %s; if this daemon is killed, its changes stay",
                    directory, exc.strerror or exc)
        return None
    news = record.take_back(daemon, tun)
    if news:
        log.warning("%s", news)
    record.start(daemon)
    return record


def take_back_left(daemon: str, directory: Path = RUN_DIR) -> list[str]:
    """Take back what killed daemons of this kind left in this network namespace; one line per record.

    For the units' ExecStopPost=: systemd runs it whenever the daemon has
    ended, also when it will not start it again.  A running daemon's record
    (locked) is left alone.
    """
    lines = []
    prefix, suffix = _file_name(daemon, _this_netns(), "*").split("*")
    for path in sorted(directory.glob(prefix + "*" + suffix)):
        tun = path.name[len(prefix):-len(suffix)]
        try:
            record = UndoRecord.open(daemon, tun, directory)
        except UndoBusy:
            continue
        try:
            news = record.take_back(daemon, tun)
        finally:
            record.close()
        if news:
            lines.append(news)
    return lines


def open_tun(daemon: str, name: str, create: bool, cleanup: contextlib.ExitStack) -> tuple[Tun, netlink.InterfaceSetup]:
    """The daemon's TUN device and the InterfaceSetup that records its changes, once what a killed
    predecessor left is taken back.

    `cleanup` takes them down in order: the changes undone, the device closed
    (gone, if the daemon created it), the record emptied.  Raises UndoBusy,
    TunError or NetlinkSetupError.
    """
    record = resume(daemon, name)
    if record is not None:
        cleanup.callback(record.close)
    tun = Tun.open(name, create=create)
    cleanup.callback(tun.close)
    setup = netlink.InterfaceSetup(tun.name, record)
    cleanup.callback(setup.close)
    cleanup.callback(setup.undo)
    return tun, setup
