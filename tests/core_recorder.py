"""A pytest plugin that records every packet given to RouterCore and PeerCore, for the fast paths' differential tests.

    SIXBED4_RECORD_CORE=/tmp/packets.pickle python -m pytest -p tests.core_recorder tests/unit/test_router_core.py

Each record is (config, "udp" or "tun", packet bytes as given, origin or None,
the peer's /114 or None), taken before the core sees (and maybe edits) the packet.
"""

from __future__ import annotations

import os
import pickle

from sixbed4.core.peer import PeerCore
from sixbed4.core.router import RouterCore

_records: list = []
_originals = {core: (core.from_udp, core.from_tun) for core in (RouterCore, PeerCore)}


def _recording(from_udp, from_tun):
    def recording_from_udp(self, packet, origin, now):
        _records.append((self.config, "udp", bytes(packet), origin, _lease(self)))
        return from_udp(self, packet, origin, now)

    def recording_from_tun(self, packet):
        _records.append((self.config, "tun", bytes(packet), None, _lease(self)))
        return from_tun(self, packet)

    return recording_from_udp, recording_from_tun


def _lease(core) -> bytes | None:
    lease = getattr(core, "lease", None)
    return lease.prefix114 if lease else None


def pytest_configure(config):
    for core, (from_udp, from_tun) in _originals.items():
        core.from_udp, core.from_tun = _recording(from_udp, from_tun)


def pytest_sessionfinish(session, exitstatus):
    for core, (from_udp, from_tun) in _originals.items():
        core.from_udp, core.from_tun = from_udp, from_tun
    with open(os.environ["SIXBED4_RECORD_CORE"], "wb") as out:
        pickle.dump(_records, out)
