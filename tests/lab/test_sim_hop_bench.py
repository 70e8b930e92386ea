"""bench/sim_hop.py traces a small run end to end (the core interpreted, in a child)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sim_hop.py"


def test_a_small_run_prints_its_ratio_and_the_hops_of_the_first_second() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--peers", "4", "--piece-kib", "64"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    head, columns, *rows = out.splitlines()
    assert head.startswith("p2p N=4 seed 1: 1.") and "piece times (26 ms)" in head
    assert columns.split()[:3] == ["verified", "pieces", "req->ver"]
    first = rows[0].split()
    assert first[:2] == ["0-", "1"] and int(first[3]) > 0  # client pieces passed on by 1 s
