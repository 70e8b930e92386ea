"""Start-up: seconds from ``swarmhub get`` process start to its first peer connection.

    .venv/bin/python bench/startup.py [--rounds 5]

Why: issue 9 wants the first peer contact within 0.5 s of process start on loopback (import
only what the command needs). One ``swarmhub seed`` of a small file on 127.0.0.1; each round
starts a fresh ``get --peer`` with ``-vv`` and reads the wall-clock time of its first
"connected <Peer" log line; the process start is taken just before ``Popen``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.harness import VENV_PYTHON, make_test_data

__all__ = ["main"]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*connected <Peer", re.M)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="swarmhub-startup-"))
    # The network rule: no DHT bootstrap routers (public hosts) from a benchmark.
    env = dict(os.environ, SWARMHUB_DHT="0", SWARMHUB_DHT_LOCAL_ONLY="1",
               SWARMHUB_STATE_DIR=str(work / "state"))
    seed = None
    try:
        data = make_test_data(work / "src", [4 << 20], seed=1)
        tfile = work / "t.torrent"
        subprocess.run([*SWARMHUB, "create", str(data), "-o", str(tfile)], check=True,
                       env=env, capture_output=True)
        seed = subprocess.Popen([*SWARMHUB, "seed", str(tfile), str(data), "--listen",
                                 "127.0.0.1:0", "--json"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert seed.stdout is not None
        port = 0
        for line in seed.stdout:
            if '"listening"' in line:
                port = int(json.loads(line)["port"])
                break
        firsts = []
        for n in range(args.rounds):
            dst = work / f"dl{n}"
            started = time.time()
            out = subprocess.run([*SWARMHUB, "get", str(tfile), "-o", str(dst), "--peer",
                                  f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "-vv",
                                  "--json"], env=dict(env, SWARMHUB_STATE_DIR=str(dst) + "s"),
                                 capture_output=True, text=True, timeout=120)
            m = _LINE.search(out.stderr)
            if out.returncode != 0 or m is None:
                print(out.stderr[-2000:])
                return 1
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            firsts.append(at - started)
            print(f"  round {n + 1}: first peer connection {at - started:.3f} s after start",
                  flush=True)
    finally:
        if seed is not None:
            seed.terminate()
            seed.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian of {args.rounds}: {statistics.median(firsts):.3f} s (target <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
