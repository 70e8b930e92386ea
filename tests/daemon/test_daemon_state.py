"""The daemon's pure parts: the queue decision and the per-torrent state files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from swarmhub.daemon.queue import Slot, to_start
from swarmhub.daemon.state import StateDir, TorrentRecord


def slots(spec: str) -> list[Slot]:
    """One character per torrent in queue order: R running, S running seed, q runnable,
    c runnable seed, p not runnable (paused, no metadata, error)."""
    return [Slot(f"t{i}", runnable=ch != "p", running=ch in "RS", complete=ch in "Sc")
            for i, ch in enumerate(spec)]


def test_downloads_start_in_queue_order_up_to_the_cap() -> None:
    assert to_start(slots("qqqq"), 2) == ["t0", "t1"]
    assert to_start(slots("Rqqq"), 2) == ["t1"]
    assert to_start(slots("RRqq"), 2) == []
    assert to_start(slots("pqq"), 1) == ["t1"], "a paused torrent keeps no slot"


def test_seeds_never_wait_and_never_take_a_slot() -> None:
    assert to_start(slots("RRcq"), 2) == ["t2"]
    assert to_start(slots("SSSq"), 1) == ["t3"]


def test_no_cap_starts_everything_runnable() -> None:
    assert to_start(slots("qpqR"), 0) == ["t0", "t2"]


def test_records_round_trip_in_queue_order_and_skip_damaged_files(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "state")
    sd.prepare()
    assert stat.S_IMODE(sd.root.stat().st_mode) == 0o700
    second = TorrentRecord(id="b" * 40, kind="magnet", source="magnet:?xt=x", save_path="/d",
                           order=2, priorities=[1, 0], peers=["127.0.0.1:1"])
    first = TorrentRecord(id="c" * 40, kind="torrent", source="x.torrent", save_path="/d",
                          order=1, paused=True, download_limit=1000)
    sd.save(second)
    sd.save(first)
    (sd.torrents / ("d" * 40 + ".json")).write_text("{half a record")
    assert sd.records() == [first, second]
    assert stat.S_IMODE(sd.record_path(first.id).stat().st_mode) == 0o600
    assert not [p for p in os.listdir(sd.torrents) if p.endswith(".tmp")]


def test_a_record_from_a_newer_daemon_keeps_what_this_one_knows() -> None:
    data = b'{"id": "aa", "kind": "torrent", "source": "s", "save_path": "/x", "future": 1}'
    assert TorrentRecord.from_json(data) == TorrentRecord("aa", "torrent", "s", "/x")


def test_the_token_is_made_once_and_private(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    sd.prepare()
    token, fresh = sd.ensure_token()
    assert fresh and len(token) >= 40
    assert stat.S_IMODE(sd.token_file.stat().st_mode) == 0o600
    assert sd.ensure_token() == (token, False)
