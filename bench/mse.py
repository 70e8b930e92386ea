"""What message stream encryption costs: ours -> ours over loopback, RC4 vs no encryption.

    .venv/bin/python bench/mse.py [--size 256] [--rounds 3] [--modes off,require]

One ``swarmhub seed --trust`` process -> one ``swarmhub get`` process (timed as in
bench/loopback.py: get start -> every piece verified; v1 torrent, 1 MiB pieces), with
``SWARMHUB_ENCRYPTION`` set for both: ``off`` (no MSE layer at all), ``require`` (RC4 stream) or
``prefer`` (the obfuscated handshake, then plaintext between two of ours: ``prefer_rc4`` is
off). The modes alternate within each round. Prints per mode the median MB/s (10^6 bytes)
and the CPU seconds of each process (from wait4: on a shared machine the CPU cost is
steadier than the rate), and the RC4 / off ratio.

One connection's handshake is ~1 ms of CPU (two 768-bit modexps); with ``prefer`` its
stream costs what ``off`` does (64 MiB: leecher 0.49 against 0.48 CPU-s). What made MSE
dear in the netns lab (~0.6 CPU-s per peer at N=32) was the number of handshakes: each
peer redialled the peers that had dialled it at every tracker answer (~450 connections a
run), fixed in the swarm core's dialer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loopback import MiB, _listening_port, _wait_progressing
from tests.interop.harness import (
    REPO_ROOT,
    VENV_PYTHON,
    HarnessError,
    Proc,
    compare_trees,
    lt_make_torrent,
    make_test_data,
)

__all__ = ["main"]


def run(cmd: list[str], torrent: Path, content: Path, dst: Path, logs: Path, timeout: float
        ) -> tuple[float, Proc, Proc]:
    """``swarmhub seed --trust`` -> ``swarmhub get``: (seconds from the get's start to its
    ``finished`` line, get process, seed process), both reaped (their CPU seconds known)."""
    seed_args = [*cmd, "seed", str(torrent), str(content), "--listen", "127.0.0.1:0", "--trust"]
    with Proc(seed_args, log=logs / "seed.log", name="swarmhub-seed") as seeder:
        port = _listening_port(seeder.wait_for_line(lambda s: _listening_port(s) is not None, 120))
        get_args = [*cmd, "get", str(torrent), "-o", str(dst), "--peer", f"127.0.0.1:{port}",
                    "--listen", "127.0.0.1:0", "--timeout", str(timeout), "--json"]
        with Proc(get_args, log=logs / "get.log", name="swarmhub-get") as getter:
            done_at = _wait_progressing(getter, timeout, 30.0)
        seeder.stop()
    return done_at - getter.started, getter, seeder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="off,require", help="comma list of off, prefer, require")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    # Run this checkout's code, whatever the venv's editable install points at.
    os.environ["PYTHONPATH"] = str(REPO_ROOT / "src")
    cmd = [str(VENV_PYTHON), "-m", "swarmhub"]
    work = Path(tempfile.mkdtemp(prefix="swarmhub-bench-mse-"))
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    try:
        content = make_test_data(work / "src", [args.size * MiB], seed=20261129)
        torrent = work / "v1.torrent"
        torrent.write_bytes(lt_make_torrent(content, "v1", MiB))
        for rnd in range(1, args.rounds + 1):
            for mode in modes if rnd % 2 else modes[::-1]:
                os.environ["SWARMHUB_ENCRYPTION"] = mode
                dst, logs = work / "dst", work / "logs" / f"r{rnd}-{mode}"
                shutil.rmtree(dst, ignore_errors=True)
                dst.mkdir()
                logs.mkdir(parents=True)
                os.sync()
                try:
                    seconds, proc, seed = run(cmd, torrent, content, dst, logs, args.timeout)
                    compare_trees(content, dst / content.name)
                except (HarnessError, AssertionError) as exc:
                    print(f"  round {rnd} {mode}: FAILED {str(exc)[:300]}")
                    return 1
                mb_s = args.size * MiB / 1e6 / seconds
                seed_cpu = seed.cpu_s or 0.0
                results[mode].append((mb_s, proc.cpu_s or 0.0, seed_cpu))
                print(f"  round {rnd} {mode}: {mb_s:.1f} MB/s, CPU leecher {proc.cpu_s:.2f} s "
                      f"seeder {seed_cpu:.2f} s", flush=True)
    finally:
        os.environ.pop("SWARMHUB_ENCRYPTION", None)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.size} MiB ours -> ours, medians of {args.rounds}:")
    med = {m: statistics.median(r[0] for r in runs) for m, runs in results.items()}
    for m, runs in results.items():
        cpu = statistics.median(r[1] for r in runs)
        seed_cpu = statistics.median(r[2] for r in runs)
        print(f"  {m:8s} {med[m]:7.1f} MB/s   CPU leecher {cpu:.2f} s, seeder {seed_cpu:.2f} s")
    if "off" in med:
        for m in modes:
            if m != "off":
                print(f"  {m} / off = {med[m] / med['off']:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The network rule: no LSD multicast or DHT routers from the processes this bench starts.
    os.environ.update(SWARMHUB_LSD="0", SWARMHUB_DHT="0", SWARMHUB_DHT_LOCAL_ONLY="1")
    sys.exit(main())
