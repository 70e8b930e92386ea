"""bench/sim_dip.py's census of idle uplinks: it only observes, and its shares add up."""

from __future__ import annotations

from types import ModuleType

from conftest import load_bench  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab import simrun
from swarmhub.settings import Settings


def _bench() -> ModuleType:
    return load_bench("sim_dip")  # type: ignore[no-any-return,unused-ignore]


def test_the_causes_add_up_and_sampling_leaves_the_run_unchanged() -> None:
    bench = _bench()
    n, size = 8, 4 << 20
    r = bench.run("p2p", n, 1, 256 * 1024, Settings(), start=0.0, stop=3.0, max_have=2,
                  dt=0.005, size=size)
    plain = load_bench("sim_ramp").simulate_with(simrun.Simulation, "p2p", n, 1,
                                                 256 * 1024, Settings(), size)
    assert r["ratio"] == plain.ratio  # an event on the queue that reads, never writes
    holders = r["causes"]["holders"]
    assert holders, "holders idled in the window"
    for g in ("few", "holders"):
        causes = r["causes"][g]
        assert set(causes) <= set(bench.CAUSES)
        if causes:
            assert abs(sum(c["share"] for c in causes.values()) - 1.0) < 2e-3
            assert abs(sum(c["x_bound"] for c in causes.values())
                       - r["idle_x_bound"][g]) < 2e-3
    # the few are among the holders, and the holders' idle is part of every client's
    # (those holding nothing yet are not classified)
    assert r["idle_x_bound"]["few"] <= r["idle_x_bound"]["holders"] + 1e-9
    by_held = r["idle_by_held_x_bound"]
    assert r["idle_x_bound"]["holders"] <= sum(v for k, v in by_held.items() if k != "0") \
        + 2e-3
    assert 0.0 <= r["busy_all"] <= 1.0
    slots = r["slots"]
    assert 0.0 <= slots["full_while_waiting"] <= 1.0
    assert all(v >= 0.0 for v in slots["unchoked_by_state"].values())
    assert slots["elsewhere_age_p10_p50_p90"] == sorted(slots["elsewhere_age_p10_p50_p90"])
