"""Serverless discovery in the namespace lab: a swarm from a magnet link on the DHT alone,
and peers that join after the hub died still find the swarm (issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import need  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab.scenario import run_scenario
from swarmhub.lab.topology import LabError, netns_available
from swarmhub.metainfo import read_torrent

PREFIX = f"d{os.getpid() % 100000}"
MIB = 1 << 20


def _leftovers() -> list[str]:
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    return [n for n in names if n.startswith(f"{PREFIX}-")]


def _logged(tmp: Path, name: str) -> str:
    return (tmp / "logs" / f"{name}.log").read_text("utf-8", "replace")


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_p2p_from_a_magnet_link_with_the_dht_only(tmp_path: Path) -> None:
    need(*netns_available())
    events: list[dict[str, object]] = []
    res = run_scenario("p2p", 4, 2 * MIB, 40e6, 100e6, 40e6, workdir=tmp_path, dht=True,
                       on_event=events.append, prefix=PREFIX)
    assert res.ok, ([h.error for h in res.hosts], res.notes)
    assert all(h.ok and h.completion_s is not None for h in res.hosts)
    # no tracker ran, the torrent names none, and the clients started from its magnet link
    assert not (tmp_path / "logs" / "h0-tracker.log").exists()
    assert not read_torrent(tmp_path / "payload.torrent").trackers
    for h in res.hosts:
        log = _logged(tmp_path, f"h{h.host}-get")
        assert "peers for the magnet link" in log and "got the metadata" in log, log[:500]
        assert "DHT: 0 peers" not in log
    assert _leftovers() == []


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_late_joiners_find_the_swarm_after_the_hub_died(tmp_path: Path) -> None:
    need(*netns_available())
    res = run_scenario("hybrid", 3, 2 * MIB, 8e6, 100e6, 16e6, fault="kill-hub@full-copy",
                       workdir=tmp_path, dht=True, late=2, prefix=PREFIX)
    assert res.fault_at_s is not None and res.pieces_held_at_fault == res.num_pieces
    late = [h for h in res.hosts if h.late]
    assert [h.host for h in late] == [4, 5]
    assert res.ok, ([h.error for h in res.hosts], res.notes)
    for h in late:
        assert h.completion_s is not None and h.completion_s > res.fault_at_s
        assert h.webseed_bytes == 0
        assert (tmp_path / f"h{h.host}" / "payload.bin").stat().st_size == 2 * MIB
        log = _logged(tmp_path, f"h{h.host}-late")
        assert "peers for the magnet link" in log and "got the metadata" in log, log[:500]
        assert "DHT: 0 peers" not in log
    assert "seeder on the DHT: UDP port 6881" in _logged(tmp_path, "h0-hub")
    summary = json.dumps([h.__dict__ for h in res.hosts])
    assert '"late": true' in summary


def test_dht_and_late_joiners_are_refused_where_they_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="namespace lab"):
        run_scenario("p2p", 2, MIB, 8e6, 8e6, workdir=tmp_path, dht=True, use_netns=False)
    with pytest.raises(LabError, match="swarmhub peers only"):
        run_scenario("p2p", 2, MIB, 8e6, 8e6, client="libtorrent", workdir=tmp_path, dht=True)


def test_late_joiners_need_the_dht_and_a_kill_hub_fault(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="late joiners"):
        run_scenario("hybrid", 1, MIB, 8e6, 8e6, workdir=tmp_path, dht=True, late=1,
                     use_netns=True, prefix=PREFIX)
    with pytest.raises(LabError, match="late joiners"):
        run_scenario("hybrid", 1, MIB, 8e6, 8e6, fault="kill-hub@full-copy",
                     workdir=tmp_path, late=1, use_netns=True, prefix=PREFIX)
    assert _leftovers() == []
