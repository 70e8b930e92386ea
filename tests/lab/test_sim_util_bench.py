"""bench/sim_util.py's accounting: its rows add up to the run's ratio."""

from __future__ import annotations

from types import ModuleType

from conftest import load_bench  # type: ignore[import-not-found,unused-ignore]
from swarmhub.settings import Settings


def _bench() -> ModuleType:
    return load_bench("sim_util")  # type: ignore[no-any-return,unused-ignore]


def test_the_capacity_rows_sum_to_the_ratio_and_the_idle_samples_match_the_links() -> None:
    r = _bench().run("p2p", 6, 1, 256 * 1024, 0.01, Settings(), dt=0.005, size=4 << 20)
    rows = r["rows"]
    # capacity = bound x (1 + slack) of payload kept + framing + waste + control + idle
    assert abs(sum(rows.values()) - r["ratio"]) < 2e-3
    assert rows["slack"] <= 0 and rows["framing"] > 0.04 and rows["idle"] > 0
    # the sampled idle is the links' own (capacity minus bytes sent), give or take the step
    assert 0.8 < r["sampled_vs_exact_idle"] < 1.25
    assert abs(sum(r["idle_by_phase"].values()) - rows["idle"]) < 2e-3
    assert "nothing yet" in r["idle_by_cause"]  # every client starts empty-handed
    assert r["first_piece_s"] and r["floor"] > 1.0
