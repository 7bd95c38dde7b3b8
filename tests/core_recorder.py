"""A pytest plugin that records every packet given to RouterCore, for the fast path's differential test.

    SIXBED4_RECORD_CORE=/tmp/packets.pickle python -m pytest -p tests.core_recorder tests/unit/test_router_core.py

Each record is (config, "udp" or "tun", packet bytes as given, origin or None),
taken before the core sees (and maybe edits) the packet.
"""

from __future__ import annotations

import os
import pickle

from sixbed4.core.router import RouterCore

_records: list = []
_from_udp, _from_tun = RouterCore.from_udp, RouterCore.from_tun


def _recording_from_udp(self, packet, origin, now):
    _records.append((self.config, "udp", bytes(packet), origin))
    return _from_udp(self, packet, origin, now)


def _recording_from_tun(self, packet):
    _records.append((self.config, "tun", bytes(packet), None))
    return _from_tun(self, packet)


def pytest_configure(config):
    RouterCore.from_udp, RouterCore.from_tun = _recording_from_udp, _recording_from_tun


def pytest_sessionfinish(session, exitstatus):
    RouterCore.from_udp, RouterCore.from_tun = _from_udp, _from_tun
    with open(os.environ["SIXBED4_RECORD_CORE"], "wb") as out:
        pickle.dump(_records, out)
