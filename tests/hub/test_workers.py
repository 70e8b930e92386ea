"""``swarmhub hub --workers 2``: two real processes on one port behave as one hub."""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hubproc import api, start_hub, wait_for
from test_two_hubs import announce, call, ports, publish

pytestmark = pytest.mark.slow


def _workers_of(pid: int) -> list[int]:
    """Child processes of ``pid`` that are hub workers (not multiprocessing's helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def _metrics(hub: Any) -> str:
    """``/metrics`` over a new connection (the kernel picks the worker that answers)."""
    with urllib.request.urlopen(hub.url + "/metrics", timeout=30) as r:
        text: str = r.read().decode()
        return text


def test_two_workers_share_one_port_catalog_and_swarm(tmp_path: Path, redis_server: Any) -> None:
    hub = start_hub(tmp_path / "hub", tmp_path, "hub", "--workers", "2", "--swarm-state",
                    redis_server.new_url(), "--tracker-peers-per-ip", "0",
                    "--tracker-announce-rate", "0")
    try:
        hub.proc.wait_for_line(lambda line: "2 hub workers serve" in line, 60)
        assert hub.token is not None
        assert len(_workers_of(hub.proc.pid)) == 2
        # Both answer: 11 refused announces (an odd number: the workers cannot have
        # counted as many each) show up as two per-process counters that add up to 11.
        for port in range(40989, 41000):
            announce(hub, b"\x07" * 20, port)  # not a file of this hub: a failure
        counts: set[int] = set()
        for _ in range(40):
            text = _metrics(hub)
            m = re.search(r"announce_failures_total (\d+)", text)
            assert m is not None
            counts.add(int(m.group(1)))
        assert len(counts) == 2 and sum(counts) == 11, counts
        admin = hub.token
        # Every request is a new connection, so the kernel spreads them over both workers:
        # whichever took the upload, all see the file and one swarm.
        status, pub = call(hub, "/api/tokens", admin, {"role": "publisher"})
        assert status == 201
        files = [publish(hub, pub["token"], os.urandom(50_000), f"f{i}.bin") for i in range(6)]
        for _ in range(10):
            status, listing = api(hub, "/api/files?limit=100", None)
            assert status == 200 and listing["total"] == 6
        # Each worker's catalog index follows the others' writes at its next poll (counted in
        # polls by test_catalog; here the deadline only guards against a hang).
        for f in files:
            fih = bytes.fromhex(f["info_hash_v1"])
            wait_for(lambda fih=fih: all(b"peers" in announce(hub, fih, 41013)
                                         for _ in range(10)), 30, "every worker to know it")
        ih = bytes.fromhex(files[0]["info_hash_v1"])
        for port in range(41000, 41010):
            announce(hub, ih, port)
        seen = ports(announce(hub, ih, 41010)[b"peers"])
        assert set(range(41000, 41010)) <= seen
        # The seeder (worker 0) seeds every file, whichever worker took its upload.
        for f in files:
            fih = bytes.fromhex(f["info_hash_v1"])
            wait_for(lambda fih=fih: hub.peer_port in ports(announce(hub, fih, 41011)[b"peers"]),
                     30, f"the seeder to seed {f['name']}")
        # A revoked token is refused by every worker (their next catalog poll; the deadline
        # only guards against a worker that never hears of it).
        assert call(hub, "/api/collections", admin, {"name": "team", "private": True})[0] == 201
        secret = publish(hub, pub["token"], os.urandom(1000), "s.bin", collection="team")
        sih = bytes.fromhex(secret["info_hash_v1"])
        status, reader = call(hub, "/api/tokens", admin, {"role": "reader"})
        wait_for(lambda: all(b"failure reason" not in announce(hub, sih, 41012,
                                                                   reader["passkey"])
                             for _ in range(10)), 5, "every worker to accept the passkey")
        assert call(hub, f"/api/tokens/{reader['id']}/revoke", admin)[0] == 200
        wait_for(lambda: all(announce(hub, sih, 41012, reader["passkey"]).get(b"failure reason")
                             == b"unknown or revoked passkey" for _ in range(10)),
                 30, "every worker to refuse the passkey")
    finally:
        hub.proc.stop()
    assert _workers_of(hub.proc.pid) == []
