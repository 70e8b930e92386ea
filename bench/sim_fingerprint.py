"""Fingerprints of ``lab simulate`` runs: is a simulator change bit-identical?

Why: a speed change to the simulator or the core must not move a single result, and a
table rounded to 3 digits would hide a moved event. Each run's fingerprint hashes the
ratio's repr, the source's and the hub's byte counts, every host's completion (the raw
virtual time of its ``finished`` event, not the report's rounded one), bytes down and up
and web seed bytes, and the notes but the one with the wall time. Run it with each
tree's own interpreter (``OTHER/.venv/bin/python OTHER/bench/sim_fingerprint.py`` or
this script with ``PYTHONPATH=OTHER/src``) and compare the lines::

    PYTHONHASHSEED=0 nice -n 19 .venv/bin/python bench/sim_fingerprint.py \
        [--peers 16,64,256] [--modes p2p,hybrid] [--seeds 1,2,3] [--piece-kib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any


def fingerprint(mode: str, peers: int, seed: int, piece_kib: int) -> tuple[str, str, float]:
    """(a hex digest, a short summary, CPU seconds) of one run."""
    from swarmhub.lab.simrun import SimOptions, simulate

    finished: dict[int, float] = {}

    def on_event(e: dict[str, Any]) -> None:
        if e.get("event") == "finished":
            finished[e["host"]] = e["at"]

    opts = SimOptions(peers=peers, size=32 << 20, up=[(20e6, 1.0)], down=[(100e6, 1.0)],
                      latency_s=0.01, piece_length=piece_kib << 10, seed=seed)
    t0 = time.process_time()
    res = simulate(mode, opts, on_event=on_event)
    cpu = time.process_time() - t0
    h = hashlib.sha256()
    h.update(repr((res.ratio, res.source_upload, res.hub_http_bytes,
                   res.hub_seeder_bytes, res.last_completion_s)).encode())
    for host in res.hosts:
        h.update(repr((host.host, finished.get(host.host), host.completion_s,
                       host.bytes_down, host.bytes_up, host.webseed_bytes, host.ok,
                       host.error)).encode())
    for note in res.notes:
        if not note.startswith("simulated in virtual time"):
            h.update(note.encode())
    return h.hexdigest()[:16], f"ratio {res.ratio!r} source {res.source_upload}", cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="16,64,256")
    ap.add_argument("--modes", default="p2p,hybrid")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--src", help="import swarmhub from this tree's src instead")
    args = ap.parse_args(argv)
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    from swarmhub import _compiled

    print(f"# {_compiled.status()}", flush=True)
    for n in (int(x) for x in args.peers.split(",")):
        for mode in args.modes.split(","):
            for seed in (int(x) for x in args.seeds.split(",")):
                digest, summary, cpu = fingerprint(mode, n, seed, args.piece_kib)
                print(f"{mode} N={n} seed={seed} {args.piece_kib}KiB {digest} {summary}"
                      f"  [{cpu:.1f} CPU-s]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
