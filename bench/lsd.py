"""Time for a download found by BEP 14 local service discovery, against one given --peer.

    sudo .venv/bin/python bench/lsd.py [--rounds 3] [--size-kib 256]

Two lab hosts (network namespaces behind a bridge, 198.18.0.0/24: multicast never leaves
them): host 0 seeds with LSD on; host 1 runs ``swarmhub get T`` until the file is verified,
either with LSD only (no tracker, no DHT, no --peer) or with ``--peer`` naming the seeder
(the anchor: the same command and data, the address given by hand). Each row is the wall
time from starting ``get`` to its exit (Python start-up included, in both), median of
``--rounds``; the ratio LSD / --peer is what finding the peer by multicast costs. The
seeder hears the leecher's first announce and dials it, so the cost should be small.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from swarmhub.lab.topology import Lab, netns_available
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.parse import torrent_bytes

_PY = [sys.executable, "-u", "-m", "swarmhub"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size-kib", type=int, default=256)
    args = p.parse_args()
    ok, why = netns_available()
    if not ok:
        print(f"cannot run: {why}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="swarmhub-bench-lsd-"))
    try:
        (work / "seed").mkdir()
        data = work / "seed" / "data.bin"
        data.write_bytes(os.urandom(args.size_kib * 1024))
        torrent = work / "data.torrent"
        torrent.write_bytes(torrent_bytes(create_torrent(data)))
        on = {**os.environ, "SWARMHUB_LSD": "1", "SWARMHUB_DHT": "0"}
        off = {**on, "SWARMHUB_LSD": "0"}
        times: dict[str, list[float]] = {"lsd": [], "peer": []}
        with Lab(f"bl{os.getpid() % 10000}", 2, 1e9, 1e9, log_dir=work / "logs") as lab:
            seed = lab.run(0, [*_PY, "seed", str(torrent), str(work / "seed"), "--listen",
                               f"{lab.addr(0)}:6881", "--json"], name="seed", env=on)
            seed.wait_json("listening", 30)
            for r in range(args.rounds):
                for mode in ("lsd", "peer"):
                    out = work / f"get-{mode}-{r}"
                    extra = ["--peer", f"{lab.addr(0)}:6881"] if mode == "peer" else []
                    t0 = time.monotonic()
                    get = lab.run(1, [*_PY, "get", str(torrent), "-o", str(out), "--listen",
                                      f"{lab.addr(1)}:0", "--timeout", "60", *extra],
                                  name=f"get-{mode}-{r}", env=on if mode == "lsd" else off)
                    code = get.wait(90)
                    elapsed = time.monotonic() - t0
                    if code != 0 or (out / data.name).read_bytes() != data.read_bytes():
                        print(f"round {r + 1} {mode}: FAILED ({code})\n{get.tail()}")
                        return 1
                    times[mode].append(elapsed)
                    print(f"  round {r + 1} {mode:4}: {elapsed:.2f} s", flush=True)
        lsd, peer = statistics.median(times["lsd"]), statistics.median(times["peer"])
        print(f"\n{args.size_kib} KiB, medians of {args.rounds}: LSD only {lsd:.2f} s, "
              f"--peer {peer:.2f} s, LSD/--peer {lsd / peer:.2f}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} "
              f"(other programs share these {os.cpu_count()} CPUs)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
