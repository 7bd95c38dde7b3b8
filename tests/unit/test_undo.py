"""The undo record (io/undo.py): what a killed daemon left, read back; who may hold it."""

from __future__ import annotations

import json
import os

import pytest

from sixbed4.io import undo

BOOT, NETNS = "c720ad24-c3a3-49bf-a9f5-80475759a289", 4169
HEADER = {"format": 1, "daemon": "peer", "pid": 42, "boot": BOOT, "netns": NETNS}
SYSCTL = {"kind": "sysctl", "spec": {"key": "net.ipv6.conf.all.forwarding", "old": "0"}, "extra": {}, "device": None}
ADDRESS = {"kind": "addr", "spec": {"index": 3, "address": "2001:db8::1", "prefixlen": 114},
           "extra": {"IFA_FLAGS": 2}, "device": ["lan0", 3]}
PROXY = {"kind": "neigh", "spec": {"dst": "2001:db8::2", "ifindex": 3, "family": 10, "flags": 8}, "extra": {},
         "device": ["lan0", 3]}
CLSACT = {"kind": "qdisc", "spec": {"index": 2, "kind": "clsact"}, "extra": {}, "device": ["eth0", 2]}
FILTER = {"kind": "filter", "spec": {"index": 2, "parent": 0xFFFFFFF2, "prio": 0xFB00, "handle": 1,
                                     "name": "uplink_in:[812]"}, "extra": {}, "device": ["eth0", 2]}


def text(*entries) -> str:
    return "".join(json.dumps(entry) + "\n" for entry in entries)


def test_made_and_not_gone_is_outstanding_oldest_first():
    record = text(HEADER, {"made": SYSCTL}, {"made": ADDRESS}, {"made": PROXY}, {"gone": ADDRESS})
    assert undo.outstanding(record, BOOT, NETNS) == (HEADER, [SYSCTL, PROXY])


def test_a_fast_paths_clsact_filter_is_outstanding_until_it_went():
    record = text(HEADER, {"made": CLSACT}, {"made": FILTER})
    assert undo.outstanding(record, BOOT, NETNS)[1] == [CLSACT, FILTER]
    assert undo.outstanding(record + text({"gone": FILTER}, {"gone": CLSACT}), BOOT, NETNS)[1] == []


def test_a_change_made_again_after_it_went_is_outstanding_once():
    record = text(HEADER, {"made": ADDRESS}, {"gone": ADDRESS}, {"made": ADDRESS})
    assert undo.outstanding(record, BOOT, NETNS)[1] == [ADDRESS]


def test_a_line_cut_short_by_a_kill_is_skipped():
    record = text(HEADER, {"made": SYSCTL}) + json.dumps({"made": ADDRESS})[:30]
    assert undo.outstanding(record, BOOT, NETNS)[1] == [SYSCTL]


@pytest.mark.parametrize("boot, netns", [("another-boot", NETNS), (BOOT, NETNS + 1)])
def test_another_boots_or_namespaces_record_is_not_acted_on(boot, netns):
    assert undo.outstanding(text(HEADER, {"made": SYSCTL}), boot, netns) == (None, [])


@pytest.mark.parametrize("record", ["", "not json\n", text({"format": 2, "boot": BOOT, "netns": NETNS}),
                                    text(["a", "list"])])
def test_an_empty_or_foreign_record_leaves_nothing_to_do(record):
    assert undo.outstanding(record, BOOT, NETNS) == (None, [])


@pytest.mark.parametrize("change", [
    {"kind": "exec", "spec": {}},  # not a kind of ours
    {"kind": "addr", "spec": "2001:db8::1"},
    {"kind": "addr", "spec": {}, "device": ["lan0"]},
    {"kind": "sysctl", "spec": {"key": "net.ipv6.conf.../../../../etc/passwd.x", "old": "0"}},
    {"kind": "sysctl", "spec": {"key": "kernel.core_pattern", "old": "core"}},
    {"kind": "sysctl", "spec": {"key": "net.ipv6.conf.all.forwarding", "old": 0}},
    {**CLSACT, "spec": {"index": 2, "kind": "htb"}},  # only the clsact qdisc is ever ours
    {**CLSACT, "device": None},
    {**FILTER, "spec": {**FILTER["spec"], "parent": 0xFFFFFFFF}},  # not a clsact hook
    {**FILTER, "spec": {**FILTER["spec"], "name": None}},
    {**FILTER, "spec": {**FILTER["spec"], "kind": "u32"}},
])
def test_a_change_not_as_interface_setup_writes_it_is_ignored(change):
    assert undo.outstanding(text(HEADER, {"made": change}, {"made": SYSCTL}), BOOT, NETNS)[1] == [SYSCTL]


def written(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_record_kept_through_a_kill_is_read_back_by_the_next_start(tmp_path):
    first = undo.UndoRecord.open("peer", "tun9", tmp_path)
    first.start("peer")
    first.made(SYSCTL)
    first.made(ADDRESS)
    first.gone(ADDRESS)
    path = first.path
    assert path.name == f"peer-{os.stat('/proc/self/ns/net').st_ino}-tun9.undo"
    assert [list(entry) for entry in written(path)] == [
        ["format", "daemon", "pid", "boot", "netns"], ["made"], ["made"], ["gone"]]
    os.close(first._fd)  # as a kill would: no close(), the lock goes with the descriptor

    second = undo.UndoRecord.open("peer", "tun9", tmp_path)
    assert second.left_behind == [SYSCTL] and second.predecessor["pid"] == os.getpid()
    second.start("peer")
    assert len(written(path)) == 1  # a fresh header: the predecessor's changes are taken back by now
    second.close()
    assert not path.exists()


def test_a_live_holder_keeps_others_out(tmp_path):
    first = undo.UndoRecord.open("router", "6bed4", tmp_path)
    first.start("router")
    with pytest.raises(undo.UndoBusy, match=rf"another router \(pid {os.getpid()}\) runs with the TUN device "
                                            r"6bed4 in this network namespace"):
        undo.UndoRecord.open("router", "6bed4", tmp_path)
    undo.UndoRecord.open("router", "tun7", tmp_path).close()  # another device: its own record
    first.close()
    undo.UndoRecord.open("router", "6bed4", tmp_path).close()


def test_a_clean_stop_with_changes_still_open_keeps_them_for_the_next_start(tmp_path):
    first = undo.UndoRecord.open("peer", "tun9", tmp_path)
    first.start("peer")
    first.made(PROXY)
    first.close()
    assert undo.UndoRecord.open("peer", "tun9", tmp_path).left_behind == [PROXY]


def test_a_device_name_with_a_slash_gets_no_record_outside_the_directory(tmp_path):
    directory = tmp_path / "run"
    assert undo.resume("router", "../../x", directory) is None
    assert not directory.exists() and list(tmp_path.iterdir()) == []


def test_a_long_run_of_changes_made_and_taken_back_keeps_the_record_short(tmp_path):
    """A LAN renumbered at every NAT rebinding: the record holds what is in place, not the history."""
    record = undo.UndoRecord.open("peer", "tun9", tmp_path)
    record.start("peer")
    record.made(SYSCTL)
    for n in range(3 * undo.COMPACT_AFTER):
        address = dict(ADDRESS, spec=dict(ADDRESS["spec"], address=f"2001:db8::{n:x}"))
        record.made(address)
        if n != 1234:
            record.gone(address)
    assert len(record.path.read_text().splitlines()) <= undo.COMPACT_AFTER + 1
    os.close(record._fd)  # a kill
    left = undo.UndoRecord.open("peer", "tun9", tmp_path).left_behind
    assert [change["spec"].get("address") for change in left] == [None, "2001:db8::4d2"]
