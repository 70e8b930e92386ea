"""One ``swarmhub seed`` -> one ``swarmhub get`` over loopback, the leecher's CPU by thread,
the leecher optionally run under a wrapper (perf, valgrind): where a download's CPU goes.

    .venv/bin/python bench/leech_once.py [--tree TREE] [--seed-tree TREE] [--version hybrid]
        [--size 1024] [--piece-kib 1024] [--dir DIR] [--wrap 'valgrind --tool=cachegrind ...']
        [--get-env NAME=VALUE]

Why apart from ``loopback.py``: one transfer, repeatable and wrappable. ``--wrap`` runs the
leecher under a profiler (``perf record -g -o OUT --``; ``valgrind --tool=cachegrind
--cache-sim=no --cachegrind-out-file=OUT``: the stable instruction count of a fixed
transfer, ``PYTHONHASHSEED=0``); ``--tree`` picks whose ``swarmhub get`` runs (A/B),
``--seed-tree`` whose seeder; ``--get-env`` sets variables for the leecher alone (e.g. a
``PYTHONPATH`` with a profiling ``sitecustomize``). Prints one JSON line: the leecher's
CPU-s (wait4: user + system), minor faults and context switches, its main thread's CPU
and each other thread's (hash and disk pools), sampled from /proc every 50 ms until it
exits (so the last ~50 ms are missing there), the wall time and the load. The data and
the .torrent (libtorrent's encoder) are made once per size in ``--dir`` and kept.
Loopback only; bounded waits; the processes started are stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.harness import lt_make_torrent, make_test_data

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=REPO,
                   help="whose `swarmhub get` (a checkout with .venv)")
    p.add_argument("--seed-tree", type=Path, default=REPO)
    p.add_argument("--version", choices=["v1", "v2", "hybrid"], default="hybrid")
    p.add_argument("--size", type=int, default=1024, help="MiB")
    p.add_argument("--piece-kib", type=int, default=1024)
    p.add_argument("--dir", type=Path, default=Path("/work/scratch/leech_once"),
                   help="data, .torrent and the download (on a disk: O_DIRECT)")
    p.add_argument("--wrap", default="", help="command line to run the leecher under")
    p.add_argument("--get-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--timeout", type=float, default=3000.0)
    return p.parse_args(argv)


def _thread_cpu(pid: int, tick: int, into: dict[int, float]) -> None:
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            into[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        pass  # exiting


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    src = a.dir / f"src{a.size}"
    content = src / "payload"
    if not content.exists():
        make_test_data(src, [a.size << 20], seed=20240601)
    torrent = a.dir / f"{a.version}-{a.size}-{a.piece_kib}.torrent"
    if not torrent.exists():
        torrent.write_bytes(lt_make_torrent(content, a.version, a.piece_kib * 1024))
    env = dict(os.environ, SWARMHUB_DHT="0", SWARMHUB_LSD="0", SWARMHUB_DHT_LOCAL_ONLY="1",
               PYTHONHASHSEED="0")
    get_env = dict(env)
    for kv in a.get_env:
        name, _, value = kv.partition("=")
        get_env[name] = value
    dst = a.dir / "dst"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    seed = subprocess.Popen(
        [str(a.seed_tree / ".venv/bin/swarmhub"), "seed", str(torrent), str(content),
         "--listen", "127.0.0.1:0", "--no-dht"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    assert seed.stdout is not None
    out = seed.stdout
    try:
        port = None
        deadline = time.monotonic() + 300
        while port is None and time.monotonic() < deadline:
            line = out.readline()
            if not line:
                break
            if '"listening"' in line:
                port = json.loads(line)["port"]
        if port is None:
            print("the seeder never listened", file=sys.stderr)
            return 1
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
        cmd = [*shlex.split(a.wrap), str(a.tree / ".venv/bin/swarmhub"), "get", str(torrent),
               "-o", str(dst), "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0",
               "--timeout", str(a.timeout), "--json", "--no-dht"]
        t0 = time.monotonic()
        get = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=get_env)
        threads: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        while get.poll() is None and time.monotonic() - t0 < a.timeout + 60:
            _thread_cpu(get.pid, tick, threads)
            time.sleep(0.05)
        if get.poll() is None:
            get.kill()
            get.wait(10)
        wall = time.monotonic() - t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the get only: seed not reaped
    finally:
        seed.terminate()
        try:
            seed.wait(20)
        except subprocess.TimeoutExpired:
            seed.kill()
            seed.wait(10)
    assert get.stderr is not None
    err = get.stderr.read().decode(errors="replace")
    shutil.rmtree(dst, ignore_errors=True)
    print(json.dumps({
        "ok": get.returncode == 0, "wall": round(wall, 2),
        "cpu": round(ru.ru_utime + ru.ru_stime, 3), "user": round(ru.ru_utime, 3),
        "minflt": ru.ru_minflt, "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw,
        "main": threads.get(get.pid, 0.0),
        "threads": sorted((v for k, v in threads.items() if k != get.pid), reverse=True),
        "load": round(os.getloadavg()[0], 2)}))
    if get.returncode != 0:
        print(err[-2000:], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
