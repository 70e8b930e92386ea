"""Where a hub ``get`` spends its time, phase by phase, in cs and hybrid mode.

    .venv/bin/python bench/get_phases.py [--size 64] [--rounds 6] [--src DIR ...]

Why: bench/hub_get.py says how long a whole ``get`` takes; this says where (issue 9:
hybrid at most 1.1x cs). One hub serves one published file over loopback; each round runs
a fresh ``get`` per mode and per ``--src`` tree (alternating the order) with a probe that
runs before the CLI, in the same process: it wraps a few functions (found by name when
their module loads, so nothing is imported earlier than the command itself would) and
notes, at each phase, the wall time since the parent started the process and the CPU
seconds the process has used (``time.process_time``, all threads) and, for phases marked
on the main thread, its own (``time.thread_time``: what hashing and writing on the pools
leave to the event loop). Written at ``atexit``; "process exit" is the parent's own wall
clock, so the gap after "atexit" is the interpreter's teardown. "gc" is the time spent in
collections before exit; "CPU s of thread main" / "of threads swarmhub-hash" (-disk) the
CPU of the main thread and of each pool's threads (hybrid: SHA-1 and direct writes off the
loop; cs does both on it).

The wrapped functions are internal: a renamed one only drops its rows from the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.interop.harness import VENV_PYTHON, make_test_data

from hub_get import QUIET, _publish, _start_hub

__all__ = ["main"]

_PROBE = r'''
import atexit, gc, importlib.abc, inspect, json, os, sys, threading, time
T0 = float(os.environ["PHASE_T0"])
marks = {}
def mark(name, last=False):
    if last or name not in marks:
        main = threading.current_thread() is threading.main_thread()
        marks[name] = (time.time() - T0, time.process_time(),
                       time.thread_time() if main else float("nan"))
mark("interpreter up")
gct = [0.0, None]
def on_gc(phase, info):
    if phase == "start":
        gct[1] = time.perf_counter()
    elif gct[1] is not None:
        gct[0] += time.perf_counter() - gct[1]
gc.callbacks.append(on_gc)
THREADS = {}
_thread_run = threading.Thread.run
def _counted_run(self):
    try:
        _thread_run(self)
    finally:
        pool = self.name.rsplit("_", 1)[0]
        THREADS[pool] = THREADS.get(pool, 0.0) + time.thread_time()
threading.Thread.run = _counted_run
def dump():
    mark("atexit")
    marks["gc (s, not CPU)"] = (gct[0], 0.0, 0.0)
    marks["CPU s of thread main"] = (time.thread_time(), 0.0, 0.0)
    for pool, cpu in THREADS.items():
        marks["CPU s of threads " + pool] = (cpu, 0.0, 0.0)
    with open(os.environ["PHASE_OUT"], "w") as fh:
        json.dump(marks, fh)
atexit.register(dump)
def wrap(obj, attr, before=None, after=None, last=False):
    f = getattr(obj, attr, None)
    if f is None:
        return
    if inspect.iscoroutinefunction(f):
        async def w(*a, **k):
            if before: mark(before)
            r = await f(*a, **k)
            if after: mark(after, last)
            return r
    elif inspect.isasyncgenfunction(f):
        async def w(*a, **k):
            async for x in f(*a, **k):
                if before:
                    mark(before)
                    mark(before.replace("first", "last"), True)
                yield x
    else:
        def w(*a, **k):
            if before: mark(before)
            r = f(*a, **k)
            if after: mark(after, last)
            return r
    setattr(obj, attr, w)
def patch(name, mod):
    if name == "swarmhub.cli":
        wrap(mod, "_setup_logging", before="get() starts")
    elif name == "swarmhub.engine.session":
        wrap(mod.Session, "listen", after="session listening")
        wrap(mod.Session, "add", after="torrent added")
        wrap(mod.Session, "close", before="session close", after="session closed")
    elif name == "swarmhub.client":
        wrap(mod, "hub_file", before="GET file info sent", after="file info")
        wrap(mod, "hub_torrent", after=".torrent fetched")
        wrap(mod, "http_download", after="cs: last byte verified, file renamed")
    elif name == "swarmhub.engine.tracker_driver":
        wrap(mod.TrackerDriver, "announce_once", before="announce sent",
             after="announce answered")
    elif name == "swarmhub.engine.webseed":
        wrap(mod.WebSeed, "_open", before="web seed: first range asked")
        wrap(mod.WebSeed, "fetch_runs", before="web seed: first run received")
    elif name == "swarmhub.engine.ondisk":
        wrap(mod.OnDisk, "save", before="resume save starts", after="resume save ends",
             last=True)
    elif name == "swarmhub.engine.torrent":
        wrap(mod.Torrent, "on_peer_connected", before="first peer connected")
        wrap(mod.Torrent, "_set_complete", before="hybrid: last piece verified+written")
    elif name == "swarmhub.progress":
        wrap(mod.DownloadView, "finished", before="last line printing",
             after="last line printed")
_pwrite = os.pwrite
def pwrite(*a):
    mark("first write")
    r = _pwrite(*a)
    mark("last write", True)
    return r
os.pwrite = pwrite
WANT = {"swarmhub.engine.ondisk", "swarmhub.cli", "swarmhub.engine.session", "swarmhub.client",
        "swarmhub.engine.tracker_driver", "swarmhub.engine.webseed", "swarmhub.engine.torrent",
        "swarmhub.progress"}
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in WANT:
            return None
        for f in sys.meta_path:
            if f is self or not hasattr(f, "find_spec"):
                continue
            spec = f.find_spec(name, path, target)
            if spec is not None:
                run = spec.loader.exec_module
                def exec_module(module, run=run, name=name):
                    run(module)
                    patch(name, module)
                spec.loader.exec_module = exec_module
                return spec
        return None
sys.meta_path.insert(0, Finder())
sys.argv[0] = "swarmhub"
from swarmhub.cli import main
mark("CLI imported")
main()
'''


def _one(url: str, mode: str, src: str, work: Path, n: int) -> dict[str, tuple[float, ...]]:
    out, dst = work / f"phases-{n}.json", work / f"dl-{n}"
    env = dict(os.environ, **QUIET, SWARMHUB_STATE_DIR=str(work / f"state-{n}"),
               PYTHONPATH=src, PHASE_OUT=str(out), PYTHONPYCACHEPREFIX=str(work / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    args = [str(VENV_PYTHON), "-c", _PROBE, "get", url, "-o", str(dst), "--json",
            "--timeout", "300", *(["--mode", "cs"] if mode == "cs" else [])]
    env["PHASE_T0"] = repr(time.time())
    started = time.time()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=400)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"get --mode {mode} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(dst, ignore_errors=True)
    rows: dict[str, tuple[float, ...]] = {
        k: tuple(v) for k, v in json.loads(out.read_text()).items()}
    rows["process exit (parent)"] = (wall, float("nan"), float("nan"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="MiB (default 64)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--src", action="append", default=None, metavar="DIR",
                   help="a src folder to run (repeatable; default this checkout's)")
    args = p.parse_args(argv)
    srcs = args.src or [str(Path(__file__).resolve().parents[1] / "src")]
    work = Path(tempfile.mkdtemp(prefix="swarmhub-phases-"))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs: dict[tuple[str, str], list[dict[str, tuple[float, ...]]]] = {}
    try:
        data = make_test_data(work / "data", [args.size << 20], seed=3)
        hub, url, token = _start_hub(work)
        with hub:
            file_url = _publish(url, token, data, work)
            series = [(src, mode) for src in srcs for mode in ("cs", "hybrid")]
            n = 0
            for r in range(args.rounds + 1):  # round 0: untimed, compiles the bytecode
                for src, mode in series if r % 2 == 0 else series[::-1]:
                    n += 1
                    rows = _one(file_url, mode, src, work, n)
                    if r:
                        runs.setdefault((src, mode), []).append(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for (src, mode), rs in runs.items():
        print(f"\n{mode} ({src}), medians of {len(rs)}: wall s since start, CPU s so far "
              "(all threads, main thread)")
        names = {k for r in rs for k in r}
        table = {k: [statistics.median(r[k][i] for r in rs if k in r) for i in range(3)]
                 for k in names}
        for k in sorted(names, key=lambda k: (k.startswith(("gc", "CPU")), table[k][0])):
            print(f"  {k:40s} {table[k][0]:7.3f}  {table[k][1]:7.3f}  {table[k][2]:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
