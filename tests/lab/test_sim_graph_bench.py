"""bench/sim_graph.py's census: every copy counted once, the tail's holders add up."""

from __future__ import annotations

from types import ModuleType

from conftest import load_bench  # type: ignore[import-not-found,unused-ignore]
from swarmhub.settings import Settings


def _bench() -> ModuleType:
    return load_bench("sim_graph")  # type: ignore[no-any-return,unused-ignore]


def test_every_client_copy_is_counted_once_and_the_last_pieces_holders_add_up() -> None:
    n = 6
    r = _bench().run("p2p", n, 1, 256 * 1024, 0.01, Settings(), dt=0.005, last=3,
                     size=4 << 20)
    # each client verifies each piece once, and the sampler sees each new piece once
    assert sum(row["copies"] for row in r["copies"].values()) == n * r["pieces"]
    for row in r["copies"].values():
        # the unchoked and the choked interested ones that lack it are among those lacking
        assert row["unchoked_lacking"] + row["choked_interested_lacking"] \
            <= row["nbrs_lacking"] + 1e-9
        assert 0.0 <= row["no_unchoked_lacking"] <= 1.0
    assert r["last_pieces"], "the tail after the last first copy was sampled"
    for snap in r["last_pieces"]:
        assert len(snap["pieces"]) <= 3
        for x in snap["pieces"]:
            assert x["holders"] + x["lacking"] == n
            assert x["holders_all_nbrs_have"] <= x["holders"]
    assert all(0.0 <= share <= 1.0 for _t, share, _u in r["reciprocity"])
