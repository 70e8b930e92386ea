"""bench/sim_phases.py's sampler: it rides the run's own queue and sees the whole run."""

from __future__ import annotations

import itertools
from types import ModuleType

from conftest import load_bench  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab import simulate as sim_mod


def _bench() -> ModuleType:
    return load_bench("sim_phases")  # type: ignore[no-any-return,unused-ignore]


def test_the_samples_cover_the_run_and_the_override_is_undone() -> None:
    original = sim_mod.Simulation.run
    kinds: dict[str, int] = {}
    rows = _bench().one(6, "p2p", 256, 2.0, 1, kinds)
    assert sim_mod.Simulation.run is original
    end = rows.pop()
    samples = rows
    # one at t=0, one per --dt of virtual time, one when the run ended (all 6 done)
    assert samples[0]["t"] == 0.0 and samples[-1]["done"] == 6
    assert [r["t"] for r in samples[:3]] == [0.0, 2.0, 4.0]
    assert all(a["seq"] <= b["seq"] and a["cpu"] <= b["cpu"]
               for a, b in itertools.pairwise(samples))
    assert samples[-1]["seq"] > 1000 * 6 and samples[-1]["conns"] > 0
    assert end["cpu"] >= samples[-1]["cpu"] >= end["start"]
    # the heap held each host's tick and the flows' completions while the run went on
    assert kinds.get("_tick", 0) > 0 and kinds.get("_done live", 0) > 0


def test_until_stops_the_run_at_that_virtual_time() -> None:
    rows = _bench().one(6, "p2p", 256, 0.5, 1, None, 1.0)
    rows.pop()
    assert rows[-1]["t"] <= 1.0 and rows[-1]["done"] == 0
