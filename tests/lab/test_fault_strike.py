"""When the lab runner strikes a fault, told by scripted client output (no lab, no process):
a fault that fires once the swarm holds every piece must find a receiver still downloading,
or say it did not.

Why: clients report once a second and as they finish. With equal receivers the swarm's
first full copy comes with the first finish and the others finish ~0.2-0.5 s later, so a
runner starved on a busy machine read every finish in one poll: kill-hub@full-copy never
fired (CI). Had it fired at that poll, it would have killed a hub nobody needed any more.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, cast

from swarmhub.lab.faults import parse_fault
from swarmhub.lab.results import HostResult, ScenarioResult
from swarmhub.lab.runner import Runner
from swarmhub.lab.topology import LabProc, LoopbackLab
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.wire.messages import bitfield_from_bools

PIECE = 16 * 1024
PIECES = 8


class ScriptedProc:
    """A client whose output is a script: each read returns the next batch of lines."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = [[json.dumps(obj) for obj in batch] for batch in batches]
        self.reads = 0
        self.started = 0.0
        self.returncode: int | None = None

    def new_lines(self) -> list[str]:
        self.reads += 1
        return self.batches.pop(0) if self.batches else []

    def poll(self) -> int | None:
        return None


class ScriptedRunner(Runner):
    """The real follow/inject loop over scripted clients; host 0 is nothing to kill."""

    def __init__(self, tmp_path: Path, fault: str) -> None:
        data = random.Random(5).randbytes(PIECES * PIECE)
        src = tmp_path / "source" / "payload.bin"
        src.parent.mkdir()
        src.write_bytes(data)
        self.meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=PIECE)
        result = ScenarioResult(mode="hybrid", client="swarmhub", peers=3, size=len(data),
                                up_bps=8e6, down_bps=8e6, source_up_bps=8e6, latency_ms=0.0,
                                shaped=False, bound_s=1.0)
        result.hosts = [HostResult(host=i, addr="127.0.0.1") for i in (1, 2, 3)]
        lab = LoopbackLab(4, 8e6, 8e6)
        super().__init__(lab, result, src, tmp_path, 30.0, lambda _e: None,
                         parse_fault(fault))
        # host 1 holds the whole file on disk (what the strike's piece count reads)
        (tmp_path / "h1").mkdir()
        (tmp_path / "h1" / "payload.bin").write_bytes(data)

    def torrent_meta(self) -> Metainfo | None:
        return self.meta


def status(*pieces: int) -> dict[str, Any]:
    have = [i in pieces for i in range(PIECES)]
    return {"progress": len(pieces) / PIECES, "have_bytes": len(pieces) * PIECE,
            "bitfield": bitfield_from_bools(have).hex()}


ALL = tuple(range(PIECES))
FINISHED = {"event": "finished", "elapsed": 3.0}


def follow(runner: ScriptedRunner, procs: dict[int, ScriptedProc]) -> ScenarioResult:
    runner.follow(cast(dict[int, LabProc], procs), t_go=None)
    return runner.result


def test_a_receiver_still_downloading_at_the_strike_is_named(tmp_path: Path) -> None:
    runner = ScriptedRunner(tmp_path, "kill-hub@full-copy")
    procs = {
        # poll 1: 0-3 + 4-5 + 6: no full copy; poll 2: host 1 holds all and finishes.
        1: ScriptedProc([[status(0, 1, 2, 3)], [status(*ALL), FINISHED]]),
        # read at the strike: nothing new; finishes two polls later, from the swarm.
        2: ScriptedProc([[status(4, 5)], [status(4, 5, 6)], [], [], [status(*ALL), FINISHED]]),
        # its finish is read only at the strike, so it was written before it: not downloading
        3: ScriptedProc([[status(6)], [status(6, 7)], [status(*ALL), FINISHED]]),
    }
    res = follow(runner, procs)
    assert runner.hub_dead
    assert res.pieces_reported_at_fault == PIECES and res.pieces_held_at_fault == PIECES
    assert res.downloading_at_fault == [2]
    by_host = {h.host: h for h in res.hosts}
    assert all(h.ok for h in res.hosts)
    assert res.fault_at_s is not None
    comp = {host: by_host[host].completion_s for host in (1, 2, 3)}
    assert comp[1] is not None and comp[1] <= res.fault_at_s
    assert comp[3] is not None and comp[3] <= res.fault_at_s  # finished before the kill
    assert comp[2] is not None and comp[2] > res.fault_at_s  # finished after it
    assert not any("tested nothing" in n or "never struck" in n for n in res.notes)


def test_every_finish_read_in_one_poll_is_reported_as_a_fault_that_never_struck(
    tmp_path: Path,
) -> None:
    """The CI case: the union completes with the first finish and the runner reads every
    finish at once. Nobody is left downloading, so nothing fires, and the result says why."""
    runner = ScriptedRunner(tmp_path, "kill-hub@full-copy")
    procs = {
        1: ScriptedProc([[status(0, 1, 2)], [status(*ALL), FINISHED]]),
        2: ScriptedProc([[status(3, 4)], [status(*ALL), FINISHED]]),
        3: ScriptedProc([[status(5, 6)], [status(*ALL), FINISHED]]),
    }
    res = follow(runner, procs)
    assert not runner.hub_dead
    assert res.fault_at_s is None and res.downloading_at_fault is None
    assert all(h.ok for h in res.hosts)
    assert any("never struck: every receiver had finished" in n for n in res.notes), res.notes


def test_a_strike_after_every_receiver_finished_says_it_tested_nothing(tmp_path: Path) -> None:
    """Hosts 2 and 3 finished while the runner was reading host 1's last lines: their
    finishes are in their output at the strike, so the fault killed a hub nobody needed."""
    runner = ScriptedRunner(tmp_path, "kill-hub@full-copy")
    procs = {
        1: ScriptedProc([[status(0, 1, 2)], [status(*ALL), FINISHED]]),
        2: ScriptedProc([[status(3, 4)], [status(3, 4)], [status(*ALL), FINISHED]]),
        3: ScriptedProc([[status(5, 6)], [status(5, 6)], [status(*ALL), FINISHED]]),
    }
    res = follow(runner, procs)
    assert runner.hub_dead and res.downloading_at_fault == []
    assert any("struck after every receiver had finished" in n for n in res.notes), res.notes
    assert res.fault_at_s is not None
    assert all(h.completion_s is not None and h.completion_s <= res.fault_at_s
               for h in res.hosts)
