"""The hub's tracker with ``--workers 1, 2`` on Redis swarms, against one in-memory worker.

    .venv/bin/python bench/hub_workers.py [--seconds 5] [--torrents 20] [--peers 2000]
        [--concurrency 64] [--keepalive | --no-keepalive] [--workers 1,2]

Each row starts a real ``swarmhub hub`` (embedded SQLite catalog, its own Redis server
on a free port, per-address limits off), publishes ``--torrents`` small files so their
info hashes are catalogued, then drives ``/announce`` with ``bench/tracker.py``'s raw
HTTP generator (one process; the same request mix). "server CPU" sums the hub's
processes (supervisor and workers). On a 2-core machine the generator takes most of one
core, so two workers cannot double the rate here: read the server CPU column too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tracker as tb

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(stat[1]) == pid:
            total += (int(stat[11]) + int(stat[12])) / tb.TICKS
    return total


def _publish(url: str, token: str, name: str) -> bytes:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
            f"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + os.urandom(
                4096) + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/files", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with _NO_PROXY.open(req, timeout=30) as r:
        return bytes.fromhex(json.loads(r.read())["info_hash_v1"])


def one_row(args: argparse.Namespace, workers: int, state: str, keepalive: bool,
            work: Path, redis_pid: int) -> tb.Row:
    port, peer_port = tb.free_port(), tb.free_port()
    data = work / f"hub-{workers}-{state}-{int(keepalive)}"
    cmd = [sys.executable, "-m", "swarmhub", "hub", "--data", str(data), "--listen",
           f"127.0.0.1:{port}", "--peer-listen", f"127.0.0.1:{peer_port}",
           "--tracker-peers-per-ip", "0", "--tracker-announce-rate", "0",
           "--workers", str(workers)]
    if state != "memory":
        cmd += ["--swarm-state", state]
    log = open(work / f"{data.name}.log", "w+b")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(tb.REPO / "src")})
    try:
        token = None
        want = f"{workers} hub workers serve" if workers > 1 else "hub listening"
        deadline = time.monotonic() + 60
        while True:
            text = (work / f"{data.name}.log").read_text()
            for line in text.splitlines():
                if line.startswith("admin token: "):
                    token = line.split()[-1]
            if token and want in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the hub did not start:\n{text}")
            time.sleep(0.1)
        hashes = [_publish(f"http://127.0.0.1:{port}", token, f"f{i}.bin")
                  for i in range(args.torrents)]
        time.sleep(1.0)  # every worker's catalog index has the files (0.25 s polls)
        args.client, args.loop = "raw", "uvloop" if _has_uvloop() else "asyncio"
        cpu0, rcpu0 = _tree_cpu(proc.pid), _tree_cpu(redis_pid)
        t0 = time.perf_counter()
        row = tb.measure(f"hub w={workers} {state.split(':')[0]}", proc.pid, args, port,
                         hashes, keepalive, 1, None)
        elapsed = time.perf_counter() - t0
        row.server_cpu = (_tree_cpu(proc.pid) - cpu0) / elapsed
        row.all_cpu = (_tree_cpu(redis_pid) - rcpu0) / elapsed  # here: redis-server's CPU
        return row
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--torrents", type=int, default=20)
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keepalive", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    modes = [True, False] if args.keepalive is None else [args.keepalive]
    work = Path(tempfile.mkdtemp(prefix="swarmhub-bench-workers-"))
    rport = tb.free_port()
    rproc = subprocess.Popen([redis, "--port", str(rport), "--bind", "127.0.0.1", "--save",
                              "", "--appendonly", "no", "--dir", str(work)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[Any] = []
    try:
        time.sleep(0.5)
        for keepalive in modes:
            plan = [(1, "memory")] + [(int(w), f"redis://127.0.0.1:{rport}/{i}")
                                      for i, w in enumerate(args.workers.split(","))]
            for workers, state in plan:
                row = one_row(args, workers, state, keepalive, work, rproc.pid)
                rows.append(row)
                print(f"{row.server:<22} keepalive={'yes' if keepalive else 'no ':<3} "
                      f"{row.rate:8.0f} announces/s  p50 {row.p50:6.1f} ms  server CPU "
                      f"{row.server_cpu:4.2f}  redis CPU {row.all_cpu:4.2f}  generator CPU "
                      f"{row.gen_cpu:4.2f}  errors "
                      f"{sum(row.errors.values())} {dict(row.errors.most_common(2)) or ''}",
                      flush=True)
    finally:
        tb.stop(rproc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
