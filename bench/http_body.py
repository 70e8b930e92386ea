"""The receiving side of a web seed's ranged GETs: aiohttp's body stream (what the web seed
used before session 20: ``readchunk`` + one copy into the run buffer) against swarmhub's
h11 client (:meth:`HttpClient.get` + ``Response.readinto`` straight into the buffer).

    .venv/bin/python bench/http_body.py [--mib 256] [--range-mib 4] [--rounds 5]

One aiohttp static file server (sendfile, in a child process) on loopback; each round
fetches the file as ``--range-mib`` ranges on one keep-alive connection with each client
in turn (alternating which goes first), into one preallocated buffer. Reports the main
thread's CPU seconds per GiB (``time.thread_time``: the server's CPU is not counted) and
the wall time, medians of ``--rounds``; also the CPU-s of importing each client.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

__all__ = ["main"]

MiB = 1 << 20


def _serve(root: str, ready: multiprocessing.SimpleQueue[int]) -> None:
    from aiohttp import web

    async def run() -> None:
        app = web.Application()
        app.router.add_static("/", root)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(run())


async def _aiohttp(url: str, size: int, step: int, buf: memoryview) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for a in range(0, size, step):
            hdr = {"Range": f"bytes={a}-{min(a + step, size) - 1}"}
            async with http.get(url, headers=hdr) as resp:
                assert resp.status == 206, resp.status
                pos = a
                while True:
                    chunk, _ = await resp.content.readchunk()
                    if not chunk:
                        break
                    buf[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                assert pos == min(a + step, size)


async def _h11(url: str, size: int, step: int, buf: memoryview) -> None:
    from swarmhub.discovery.httpget import HttpClient

    async with HttpClient() as http:
        for a in range(0, size, step):
            end = min(a + step, size)
            async with await http.get(url, headers={"Range": f"bytes={a}-{end - 1}"}) as resp:
                assert resp.status == 206, resp.status
                pos = a
                while n := await resp.readinto(buf[pos:end]):
                    pos += n
                assert pos == end


def _import_cpu(module: str) -> float:
    code = f"import time; t = time.process_time(); import {module}; print(time.process_time() - t)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    return float(out.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--range-mib", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    size, step = args.mib * MiB, args.range_mib * MiB
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="swarmhub-httpbody-") as root:
        Path(root, "f.bin").write_bytes(os.urandom(size))
        ready: multiprocessing.SimpleQueue[int] = multiprocessing.SimpleQueue()
        server = multiprocessing.Process(target=_serve, args=(root, ready), daemon=True)
        server.start()
        try:
            url = f"http://127.0.0.1:{ready.get()}/f.bin"
            buf = memoryview(bytearray(size))
            clients = {"aiohttp": _aiohttp, "h11": _h11}
            cpu: dict[str, list[float]] = {k: [] for k in clients}
            wall: dict[str, list[float]] = {k: [] for k in clients}
            for r in range(args.rounds + 1):  # round 0: warm-up, untimed
                for name in (list(clients) if r % 2 else list(clients)[::-1]):
                    c0, w0 = time.thread_time(), time.perf_counter()
                    asyncio.run(clients[name](url, size, step, buf))
                    if r:
                        cpu[name].append(time.thread_time() - c0)
                        wall[name].append(time.perf_counter() - w0)
        finally:
            server.kill()
            server.join(10)
    gib = size / (1 << 30)
    for name in clients:
        print(f"{name:8}: {statistics.median(cpu[name]) / gib:.2f} CPU-s/GiB, "
              f"{size / MiB / statistics.median(wall[name]):.0f} MiB/s wall "
              f"(medians of {args.rounds}, {args.mib} MiB in {args.range_mib} MiB ranges)")
    for module in ("aiohttp", "swarmhub.discovery.httpget"):
        costs = [_import_cpu(module) for _ in range(args.rounds)]
        print(f"import {module}: {statistics.median(costs):.3f} CPU-s (median of {args.rounds})")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
