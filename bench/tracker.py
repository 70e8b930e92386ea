"""Tracker announce rate, HTTP and UDP: swarmhub's standalone tracker vs Debian opentracker.

    .venv/bin/python bench/tracker.py [--seconds 10] [--torrents 100] [--peers 5000]
        [--concurrency 64] [--keepalive | --no-keepalive] [--generators auto|1|2]
        [--client raw|aiohttp] [--pin | --no-pin] [--only swarmhub|opentracker] [--rounds 1]
        [--proto both|http|udp] [--udp-inflight 16] [--profile OUT.prof]
        [--workers 1,2]

Why this shape: the tracker runs as its own process (``python -m swarmhub.hub.tracker``,
exactly as shipped) on 127.0.0.1 and a free port; the load comes from separate generator
processes, so the server's figure is not shared with the client's event loop. Each
generator owns a slice of ``--peers`` simulated peers (distinct peer ids and ports) spread
over ``--torrents`` random info hashes; a peer sends compact=1, numwant=50 announces with
a mix of events (80 % regular, 10 % started, 10 % completed) and left>0 / left=0 (every
fifth peer is a seeder). Before timing, every peer announces "started" once, so the
swarms are full (``--peers / --torrents`` peers each) when the clock starts.

``--concurrency`` requests are outstanding at a time (split over the generators); with
keep-alive each keeps one HTTP/1.1 connection, without it every announce opens a new one
(``Connection: close``), which is what most BitTorrent clients do. A response counts only
when it is HTTP 200 with a bencoded dict carrying ``peers`` and no ``failure reason``.

The generator must not be the bottleneck, so the default ``--client raw`` is a minimal
HTTP/1.1 client on asyncio protocols (and uvloop when installed); ``--client aiohttp``
uses aiohttp's ClientSession, which costs several times more CPU per request. Every
row prints the CPU the generators and the server used during the timed window (in
cores): a generator near 1.0 core means the figure is a lower bound; then (with
``--generators auto``, the default) the row is measured again with two generators.
With ``--pin`` (default, when there are enough CPUs) the server runs on the first CPU and
a single generator on the others, the same for both trackers. "all CPU" is the whole
machine: about 0.2 core beyond the two sides is loopback softirq; more means another
program ran, and such a row is flagged and left out of the summary when others exist.
``--rounds N`` restarts both trackers each round and reports the median round.
``--profile OUT`` runs our tracker under cProfile (``python -m pstats OUT``).

UDP rows (BEP 15; ``--proto udp`` for only those): our tracker answers on the same port
over UDP (``--udp``), opentracker too (``-P``). The same peers and event mix are
announced by one generator process keeping ``--udp-inflight`` announces outstanding on
one socket (``bench/udp_load.py``): the load is bounded, and by Little's law latency is
about in-flight / rate, so 16 in flight at 20,000/s means ~0.8 ms. The aim for our UDP
tracker is >= 20,000 announces/s on one core with p99 <= 5 ms.

``--workers 1,2``: instead of the standalone tracker, a whole ``swarmhub hub`` (catalog
lookups, limits; ``bench/hubbench.py``) answers, HTTP only: one worker with in-memory
swarms, then each worker count on Redis swarms (``--workers N`` needs a shared swarm
state; a Redis server is started for the run), opentracker in the same round. The hub's
torrents are ``--torrents`` small files with fixed contents, published to each hub, so
every hub and opentracker's whitelist see the same info hashes. One-worker rows and
opentracker are pinned as above; with N > 1 workers nothing is pinned (on 2 CPUs the
workers and the generator share both): read the server CPU column with the rate.

opentracker (Debian's build is whitelist-only): it is started with ``-d`` a temp folder
holding ``whitelist.txt`` with the bench's info hashes (``-w`` is read inside the chroot).
When it is not installed the anchor is skipped with the reason and the install command.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import IO, Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

__all__ = ["main"]

REQUIRED_RATE = 5000.0
UDP_AIM_RATE = 20000.0
UDP_AIM_P99_MS = 5.0
MAX_SECONDS = 300.0
MAX_LATENCIES = 2_000_000  # per generator; counts stay exact beyond it
SATURATED = 0.9  # generator CPU (cores) above which its figure is only a lower bound
CONTENDED = 0.5  # cores used by neither side (nor loopback softirq): someone else ran
OPENTRACKER_HELP = "install it with `apt-get install -y opentracker`"
TICKS = os.sysconf("SC_CLK_TCK")
EVENTS = ("", "started", "completed")


# --- processes -------------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (opentracker binds UDP too)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise SystemExit("no free port on 127.0.0.1")


def pinned(cpus: set[int] | None) -> Any:
    """A preexec_fn pinning a child to ``cpus`` (None: leave placement to the kernel)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started, by its PID (SIGTERM, then SIGKILL after 10 s)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a process (all its threads) and of its children (a hub's
    workers), from /proc."""
    import hubbench

    return hubbench.tree_cpu(pid)


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (every CPU, kernel softirq included)."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / TICKS  # all but idle and iowait


def probe(port: int, request: bytes) -> bytes:
    """One blocking HTTP exchange (readiness checks only): the raw response bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def wait_ready(port: int, proc: subprocess.Popen[bytes], request: bytes, timeout: float) -> None:
    """Until an announce gets a peers answer (opentracker loads its whitelist lazily)."""
    deadline = time.monotonic() + timeout
    last = "nothing listening"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tracker exited early with code {proc.returncode}")
        try:
            answer = probe(port, request)
            if answer.startswith(b"HTTP/1.") and b"5:peers" in answer:
                return
            last = repr(answer[-120:])
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise SystemExit(f"tracker on 127.0.0.1:{port} not ready after {timeout} s: {last}")


def wait_udp_ready(
    port: int, proc: subprocess.Popen[bytes], hashes: Sequence[bytes], timeout: float
) -> None:
    """Until a UDP connect + announce gets an announce answer."""
    from udp_load import announce_tails, udp_probe

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tracker exited early with code {proc.returncode}")
        if udp_probe(port, announce_tails(hashes, 0)[1], timeout=0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"no UDP tracker answer on 127.0.0.1:{port} after {timeout} s")


def log_file() -> IO[bytes]:
    """Where a server's stderr goes: a file, not a pipe nobody reads while it runs."""
    return tempfile.TemporaryFile(prefix="swarmhub-bench-")


def start_ours(port: int, cpus: set[int] | None, profile: Path | None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "swarmhub.hub.tracker", "--listen", f"127.0.0.1:{port}",
            "--udp", f"127.0.0.1:{port}"]
    if profile is not None:  # run_app exits normally on SIGTERM, so cProfile writes
        argv[1:1] = ["-m", "cProfile", "-o", str(profile)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(
        argv, env=env, preexec_fn=pinned(cpus), stdout=subprocess.DEVNULL, stderr=log_file()
    )


def start_opentracker(
    binary: str, tmp: Path, hashes: Sequence[bytes], port: int, cpus: set[int] | None
) -> subprocess.Popen[bytes]:
    root = tmp / "opentracker"
    root.mkdir(mode=0o755)
    (root / "whitelist.txt").write_text("".join(h.hex() + "\n" for h in hashes))
    (root / "whitelist.txt").chmod(0o644)
    argv = [binary, "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-d", str(root)]
    argv += ["-w", "whitelist.txt"]
    if os.geteuid() != 0:  # it can only chroot/setuid as root; as a user it stays put
        argv += ["-u", str(os.getuid())]
    return subprocess.Popen(
        argv, preexec_fn=pinned(cpus), stdout=subprocess.DEVNULL, stderr=log_file()
    )


# --- the load --------------------------------------------------------------------------


def info_hashes(torrents: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(20) for _ in range(torrents)]


def announce_requests(
    port: int, hashes: Sequence[bytes], peer: int, keepalive: bool
) -> tuple[bytes, bytes, bytes]:
    """The three raw GETs (regular, started, completed) of simulated peer number ``peer``."""
    rng = random.Random(peer)
    peer_id = b"-SB0001-" + f"{peer:012d}".encode()
    left = 0 if peer % 5 == 0 else rng.randrange(1, 1 << 30)
    base = [
        ("info_hash", urllib.parse.quote_from_bytes(hashes[peer % len(hashes)], safe="")),
        ("peer_id", urllib.parse.quote_from_bytes(peer_id, safe="")),
        ("port", str(10000 + peer)),
        ("uploaded", str(rng.randrange(1 << 32))),
        ("downloaded", str(rng.randrange(1 << 32))),
    ]
    tail = [("compact", "1"), ("numwant", "50"), ("key", f"{rng.getrandbits(32):08x}")]
    out = []
    for event in EVENTS:
        pairs = [*base, ("left", str(0 if event == "completed" else left)), *tail]
        if event:
            pairs.append(("event", event))
        target = "/announce?" + "&".join(f"{k}={v}" for k, v in pairs)
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: swarmhub-bench\r\n"
        if not keepalive:
            head += "Connection: close\r\n"
        out.append((head + "\r\n").encode("ascii"))
    return out[0], out[1], out[2]


def check(status: int, body: bytes) -> str | None:
    """``None`` when the answer is a real announce answer, else why not."""
    if status != 200:
        return f"HTTP {status}"
    if not body.startswith(b"d") or b"failure reason" in body:
        return "failure: " + body[:80].decode("latin-1", "replace")
    if b"5:peers" not in body:
        return "answer without peers"
    return None


class HttpConn(asyncio.Protocol):
    """A minimal HTTP/1.1 client connection: one request outstanding at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            answer = self._parse(eof=False)
            if answer is not None:
                self.waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            answer = self._parse(eof=True)
            if answer is not None:
                self.waiter.set_result(answer)
            else:
                self.waiter.set_exception(ConnectionResetError("closed before the answer"))

    def _parse(self, eof: bool) -> tuple[int, bytes, bool] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            eol = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : eol if eol >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return None
            body = bytes(self.buf[end + 4 : end + 4 + length])
        elif eof:
            body = bytes(self.buf[end + 4 :])
        else:
            return None
        del self.buf[: end + 4 + len(body)]
        keep = head.startswith(b"http/1.1") and b"\r\nconnection: close" not in head
        return int(head[9:12]), body, keep and not eof

    async def request(self, data: bytes) -> tuple[int, bytes, bool]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Tally:
    """What one generator saw in one phase."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    opened: int = 0
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    last_done: float = 0.0


class RawClient:
    """Worker slots over :class:`HttpConn`; a slot keeps its connection across phases.

    Like any HTTP client, a request on a reused connection that the server had already
    closed (opentracker closes after every answer, without saying so) is sent again once
    on a new connection; the latency includes that.
    """

    def __init__(self, port: int, slots: int, keepalive: bool) -> None:
        self.port = port
        self.keepalive = keepalive
        self.conns: list[HttpConn | None] = [None] * slots

    async def _connect(self, slot: int, tally: Tally) -> HttpConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(HttpConn, "127.0.0.1", self.port)
        self.conns[slot] = conn
        tally.opened += 1
        return conn

    async def one(self, slot: int, data: bytes, tally: Tally) -> None:
        conn = self.conns[slot]
        try:
            if conn is None or conn.closed:
                conn = await self._connect(slot, tally)
                status, body, keep = await conn.request(data)
            else:
                try:
                    status, body, keep = await conn.request(data)
                except OSError:
                    if conn.buf:
                        raise
                    conn.close()
                    conn = await self._connect(slot, tally)
                    status, body, keep = await conn.request(data)
        except OSError as exc:
            tally.errors[type(exc).__name__] += 1
            self.conns[slot] = None
            return
        if not (keep and self.keepalive):
            conn.close()
            self.conns[slot] = None
        why = check(status, body)
        if why is None:
            tally.ok += 1
        else:
            tally.errors[why] += 1

    async def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()


class AiohttpClient:
    """The same load through aiohttp's ClientSession (for comparison; costs more CPU)."""

    def __init__(self, port: int, slots: int, keepalive: bool) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.port = port
        self.tally: Tally | None = None
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._opened)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=slots, force_close=not keepalive),
            trace_configs=[trace],
            auto_decompress=False,
        )
        self.urls: dict[bytes, Any] = {}

    async def _opened(self, *_: object) -> None:
        if self.tally is not None:
            self.tally.opened += 1

    async def one(self, slot: int, data: bytes, tally: Tally) -> None:
        from yarl import URL

        del slot
        self.tally = tally
        url = self.urls.get(data)
        if url is None:
            target = data.split(b" ", 2)[1].decode("ascii")
            url = self.urls[data] = URL(f"http://127.0.0.1:{self.port}{target}", encoded=True)
        try:
            async with self.session.get(url) as resp:
                body = await resp.read()
                status = resp.status
        except (OSError, self.aiohttp.ClientError) as exc:
            tally.errors[type(exc).__name__] += 1
            return
        why = check(status, body)
        if why is None:
            tally.ok += 1
        else:
            tally.errors[why] += 1

    async def close(self) -> None:
        await self.session.close()


@dataclass(frozen=True)
class GenJob:
    port: int
    hashes: list[bytes]
    peers: list[int]
    slots: int
    keepalive: bool
    seconds: float
    client: str
    loop: str
    cpus: set[int] | None
    proto: str = "http"


def generate_udp(job: GenJob, barrier: Barrier) -> dict[str, Any]:
    """The UDP load (``bench/udp_load.py``): warm-up, barrier, then the timed window."""
    from udp_load import UdpLoad, UdpTally, announce_tails

    tails = [announce_tails(job.hashes, p) for p in job.peers]
    load = UdpLoad(job.port, job.slots)
    load.connect()
    warm = UdpTally()
    started = iter([t[1] for t in tails])
    load.run(lambda: next(started), warm, total=len(tails))
    barrier.wait(60)

    tally = UdpTally()
    rng = random.Random(os.getpid())
    choose, rand = rng.choice, rng.random

    def pick() -> bytes:
        r = rand()
        return choose(tails)[0 if r >= 0.2 else 1 if r < 0.1 else 2]

    start = time.perf_counter()
    deadline = start + job.seconds
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    load.run(pick, tally, until=deadline)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    load.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "ok": tally.ok,
        "errors": dict(tally.errors),
        "warm_errors": dict(warm.errors),
        "opened": 0,
        "elapsed": max(tally.last_done, deadline) - start,
        "cpu": cpu,
        "latencies": tally.latencies.tobytes(),
    }


async def generate(job: GenJob, barrier: Barrier) -> dict[str, Any]:
    reqs = [announce_requests(job.port, job.hashes, p, job.keepalive) for p in job.peers]
    client: RawClient | AiohttpClient
    if job.client == "raw":
        client = RawClient(job.port, job.slots, job.keepalive)
    else:
        client = AiohttpClient(job.port, job.slots, job.keepalive)
    loop = asyncio.get_running_loop()

    # Warm-up (untimed): every peer of this slice announces "started" once.
    warm = Tally()
    todo = iter(r[1] for r in reqs)

    async def warm_worker(slot: int) -> None:
        for data in todo:
            await client.one(slot, data, warm)

    await asyncio.wait_for(asyncio.gather(*(warm_worker(i) for i in range(job.slots))), 120)
    await loop.run_in_executor(None, barrier.wait, 60)

    tally = Tally()
    rng = random.Random(os.getpid())
    start = time.perf_counter()
    deadline = start + job.seconds
    usage0 = resource.getrusage(resource.RUSAGE_SELF)

    async def worker(slot: int) -> None:
        choose, rand, lats = rng.choice, rng.random, tally.latencies
        while (t0 := time.perf_counter()) < deadline:
            r = rand()
            data = choose(reqs)[0 if r >= 0.2 else 1 if r < 0.1 else 2]
            await client.one(slot, data, tally)
            t1 = time.perf_counter()
            if len(lats) < MAX_LATENCIES:
                lats.append(t1 - t0)
            tally.last_done = t1

    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker(i) for i in range(job.slots))), job.seconds + 15
        )
    except TimeoutError:
        tally.errors["still waiting 15 s after the end"] += 1
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    await client.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return {
        "ok": tally.ok,
        "errors": dict(tally.errors),
        "warm_errors": dict(warm.errors),
        "opened": tally.opened,
        "elapsed": max(tally.last_done, deadline) - start,
        "cpu": cpu,
        "latencies": tally.latencies.tobytes(),
    }


def generator_main(job: GenJob, barrier: Barrier, out: Connection) -> None:
    """Body of a generator process: run, then send the tally to the parent."""
    if job.cpus:
        os.sched_setaffinity(0, job.cpus)
    if job.loop == "uvloop" and job.proto == "http":
        import uvloop

        uvloop.install()
    try:
        if job.proto == "udp":
            result = generate_udp(job, barrier)
        else:
            result = asyncio.run(generate(job, barrier))
    except BaseException as exc:  # reported by the parent, which owns the exit code
        barrier.abort()
        result = {"fatal": f"{type(exc).__name__}: {exc}"}
    out.send(result)
    out.close()


# --- one measurement -------------------------------------------------------------------


@dataclass
class Row:
    server: str
    keepalive: bool
    generators: int
    rate: float = 0.0
    ok: int = 0
    p50: float = 0.0
    p99: float = 0.0
    worst: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    opened: int = 0
    gen_cpu: float = 0.0  # cores, summed over generators
    server_cpu: float = 0.0  # cores
    all_cpu: float = 0.0  # cores busy on the whole machine (others, softirq included)
    proto: str = "http"

    @property
    def saturated(self) -> bool:
        return self.gen_cpu / self.generators >= SATURATED

    @property
    def contended(self) -> bool:
        """Other programs took CPU in the window (beyond the ~0.2 core of softirq)."""
        return self.all_cpu - self.gen_cpu - self.server_cpu > CONTENDED


def measure(
    server: str,
    pid: int,
    args: argparse.Namespace,
    port: int,
    hashes: list[bytes],
    keepalive: bool,
    generators: int,
    cpus: set[int] | None,
    proto: str = "http",
) -> Row:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(generators + 1)
    peers = list(range(args.peers))
    procs, pipes = [], []
    for g in range(generators):
        inflight = args.udp_inflight if proto == "udp" else args.concurrency
        slots = inflight // generators + (g < inflight % generators)
        job = GenJob(
            port,
            hashes,
            peers[g::generators],
            slots,
            keepalive,
            args.seconds,
            args.client,
            args.loop,
            cpus,
            proto,
        )
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=generator_main, args=(job, barrier, send), daemon=True)
        proc.start()
        send.close()
        procs.append(proc)
        pipes.append(recv)
    row = Row(server, keepalive, generators, proto=proto)
    results: list[dict[str, Any]] = []
    try:
        barrier.wait(timeout=180)  # warm-up done everywhere
        cpu0, all0, t0 = cpu_seconds(pid), machine_busy(), time.perf_counter()
        time.sleep(args.seconds)
        cpu1, all1, t1 = cpu_seconds(pid), machine_busy(), time.perf_counter()
        row.server_cpu = (cpu1 - cpu0) / (t1 - t0)
        row.all_cpu = (all1 - all0) / (t1 - t0)
        for recv in pipes:
            if not recv.poll(args.seconds + 60):
                raise SystemExit("a generator sent no result")
            results.append(recv.recv())
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(timeout=10)
    lats = array.array("d")
    elapsed = 0.0
    for res in results:
        if "fatal" in res:
            raise SystemExit(f"a generator failed: {res['fatal']}")
        row.ok += res["ok"]
        row.errors.update(res["errors"])
        row.errors.update({f"warm-up: {k}": v for k, v in res["warm_errors"].items()})
        row.opened += res["opened"]
        row.gen_cpu += res["cpu"] / res["elapsed"]
        elapsed = max(elapsed, res["elapsed"])
        lats.frombytes(res["latencies"])
    row.rate = row.ok / elapsed if elapsed else 0.0
    ordered = sorted(lats)
    if ordered:
        row.p50 = ordered[len(ordered) // 2] * 1e3
        row.p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
        row.worst = ordered[-1] * 1e3
    return row


def run_server(
    name: str,
    proc: subprocess.Popen[bytes],
    args: argparse.Namespace,
    port: int,
    hashes: list[bytes],
    modes: Sequence[bool],
    gen_cpus: set[int] | None,
) -> list[Row]:
    rows = []
    try:
        wait_ready(port, proc, announce_requests(port, hashes, 0, False)[1], timeout=20)
        for keepalive in modes:
            counts = [1, 2] if args.generators == "auto" else [int(args.generators)]
            for n in counts:
                # Two generators on a 2-CPU machine cannot both sit off the server's CPU.
                row = measure(
                    name, proc.pid, args, port, hashes, keepalive, n, gen_cpus if n == 1 else None
                )
                rows.append(row)
                print_row(row)
                if args.generators == "auto" and not row.saturated:
                    break
        if args.proto in ("both", "udp"):
            wait_udp_ready(port, proc, hashes, timeout=20)
            # One generator: the UDP load costs it a fraction of what it costs the server.
            row = measure(name, proc.pid, args, port, hashes, True, 1, gen_cpus, proto="udp")
            rows.append(row)
            print_row(row)
    finally:
        stop(proc)
        if proc.returncode not in (0, 130, -signal.SIGTERM):  # 130: the hub on SIGTERM
            print(f"{name} exited with code {proc.returncode}", file=sys.stderr)
    return rows


# --- report ----------------------------------------------------------------------------

HEADER = (
    f"{'server':<12} {'conn':<10} {'gen':>3} {'announces/s':>11} {'p50 ms':>7} {'p99 ms':>7}"
    f" {'max ms':>7} {'errors':>6} {'conns':>7} {'gen CPU':>7} {'srv CPU':>7} {'all CPU':>7}"
    f" {'vs aim':>7}"
)


def print_row(row: Row) -> None:
    conn = "UDP" if row.proto == "udp" else "keep-alive" if row.keepalive else "new conn"
    errors = sum(row.errors.values())
    print(
        f"{row.server:<12} {conn:<10} {row.generators:>3} {row.rate:>11.0f} {row.p50:>7.2f}"
        f" {row.p99:>7.2f} {row.worst:>7.1f} {errors:>6} {row.opened:>7} {row.gen_cpu:>7.2f}"
        f" {row.server_cpu:>7.2f} {row.all_cpu:>7.2f}"
        f" {row.rate / (UDP_AIM_RATE if row.proto == 'udp' else REQUIRED_RATE):>7.2f}"
        + ("  (generator-bound)" if row.saturated else "")
        + ("  (machine busy with others: not counted)" if row.contended else ""),
        flush=True,
    )
    for why, n in row.errors.most_common(3):
        print(f"{'':<14}{n} x {why}")


def figure(rows: Sequence[Row], server: str, keepalive: bool, proto: str = "http") -> Row | None:
    """The row standing for a server and mode: per generator count the median round, and
    of those the fastest (a saturated single generator understates the server). Rows
    measured while other programs took the CPU count only when there is nothing else."""
    mine = [
        r for r in rows
        if r.server == server and r.proto == proto and (proto == "udp" or r.keepalive == keepalive)
    ]
    mine = [r for r in mine if not r.contended] or mine
    medians = []
    for n in sorted({r.generators for r in mine}):
        runs = sorted((r for r in mine if r.generators == n), key=lambda r: r.rate)
        medians.append(runs[(len(runs) - 1) // 2])
    return max(medians, key=lambda r: r.rate) if medians else None


def per_core(row: Row) -> float:
    """Announces per CPU-second of the server: what one whole core would answer at this
    cost, the figure to read when other programs took part of the server's CPU."""
    return row.rate / row.server_cpu if row.server_cpu else 0.0


def summary(rows: Sequence[Row], modes: Sequence[bool], anchor_note: str | None) -> bool:
    ok = True
    print()
    for keepalive in modes:
        conn = "keep-alive" if keepalive else "new connection per announce"
        ours = figure(rows, "swarmhub", keepalive)
        if ours is None:
            continue
        errors = sum(
            sum(r.errors.values()) for r in rows if r.server == "swarmhub" and r.proto == "http"
        )
        met = ours.rate >= REQUIRED_RATE and not errors
        ok &= met
        line = (
            f"{conn}: swarmhub {ours.rate:.0f}/s = {ours.rate / REQUIRED_RATE:.2f}x the required "
            f"{REQUIRED_RATE:.0f}/s ({'met' if met else 'NOT met'})"
        )
        ot = figure(rows, "opentracker", keepalive)
        if ot is not None and ot.rate:
            line += f"; opentracker {ot.rate:.0f}/s; swarmhub/opentracker {ours.rate / ot.rate:.2f}"
            if ot.saturated or ours.saturated:
                line += " (a generator was saturated: that side is a lower bound)"
            if keepalive and ot.opened > ot.ok / 2:
                line += (
                    "\n  (opentracker closed the connection after every answer, so its"
                    " keep-alive row reconnects for each announce)"
                )
        print(line)
    ours = figure(rows, "swarmhub", True, "udp")
    if ours is not None:
        udp_rows = [r for r in rows if r.server == "swarmhub" and r.proto == "udp"]
        met = ours.rate >= UDP_AIM_RATE and ours.p99 <= UDP_AIM_P99_MS
        line = (
            f"UDP (BEP 15, {len(udp_rows)} run(s), median): swarmhub {ours.rate:.0f}/s, p99"
            f" {ours.p99:.2f} ms on {ours.server_cpu:.2f} core = {per_core(ours):.0f} per"
            f" server CPU-second (aim >= {UDP_AIM_RATE:.0f}/s with p99 <= {UDP_AIM_P99_MS:g} ms:"
            f" {'met' if met else 'NOT met'})"
        )
        ot = figure(rows, "opentracker", True, "udp")
        if ot is not None and ot.rate:
            line += (f"; opentracker {ot.rate:.0f}/s, p99 {ot.p99:.2f} ms on"
                     f" {ot.server_cpu:.2f} core = {per_core(ot):.0f} per server CPU-second;"
                     f" swarmhub/opentracker {ours.rate / ot.rate:.2f}")
            if ot.saturated:
                line += " (the generator was saturated: opentracker's figure is a lower bound)"
        print(line)
        ok &= met
    if anchor_note:
        print(anchor_note)
    return ok


def hub_workers(
    args: argparse.Namespace,
    modes: Sequence[bool],
    binary: str | None,
    server_cpus: set[int] | None,
    gen_cpus: set[int] | None,
) -> bool:
    """``--workers``: whole hubs (1 worker in memory, then N workers on Redis) and
    opentracker, each round afresh; prints the median per configuration."""
    import hubbench

    counts = [int(w) for w in args.workers.split(",")]
    if not counts or min(counts) < 1 or max(counts) > 16:
        raise SystemExit("--workers: worker counts from 1 to 16, e.g. 1,2")
    args.proto = "http"  # the hub's UDP tracker needs in-memory swarms
    plan = [(1, "memory")] + [(w, "redis") for w in counts]
    rng = random.Random(args.seed)
    files = [(f"f{i}.bin", rng.randbytes(4096)) for i in range(args.torrents)]
    names = [f"hub w={w} {state}" for w, state in plan]
    rows: list[Row] = []
    with hubbench.servers().redis_server() as redis, tempfile.TemporaryDirectory(
        prefix="swarmhub-bench-"
    ) as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        for rnd in range(args.rounds):
            hashes: list[bytes] = []
            for (workers, state), name in zip(plan, names, strict=True):
                extra = [] if state == "memory" else ["--swarm-state", redis.new_url()]
                one = workers == 1
                hub = hubbench.start_hub(tmp / f"r{rnd}-{workers}-{state}", *extra,
                                         workers=workers,
                                         preexec=pinned(server_cpus if one else None))
                try:
                    hashes = [bytes.fromhex(hubbench.publish(hub, n, d)["info_hash_v1"])
                              for n, d in files]
                    time.sleep(1.0)  # every worker's catalog index has the files
                except BaseException:
                    stop(hub.proc)
                    raise
                rows += run_server(name, hub.proc, args, hub.port, hashes, modes,
                                   gen_cpus if one else None)
            if binary is not None:
                port = free_port()
                ot = tmp / f"ot{rnd}"
                ot.mkdir(mode=0o755)
                proc = start_opentracker(binary, ot, hashes, port, server_cpus)
                rows += run_server("opentracker", proc, args, port, hashes, modes, gen_cpus)
    print(f"\nmedian of {args.rounds} round(s), announces/s (server CPU in cores):")
    ok = True
    for keepalive in modes:
        conn = "keep-alive" if keepalive else "new connection per announce"
        ot = figure(rows, "opentracker", keepalive)
        for name in names:
            row = figure(rows, name, keepalive)
            if row is None:
                continue
            errors = sum(sum(r.errors.values()) for r in rows if r.server == name)
            ok &= not errors
            line = (f"  {conn:<28} {name:<16} {row.rate:8.0f}/s ({row.server_cpu:.2f} core,"
                    f" {per_core(row):.0f} per server CPU-second)")
            if ot is not None and ot.rate:
                line += f"  hub/opentracker {row.rate / ot.rate:.2f}"
            print(line + (f"  {errors} errors" if errors else ""))
        if ot is not None:
            print(f"  {conn:<28} {'opentracker':<16} {ot.rate:8.0f}/s ({ot.server_cpu:.2f}"
                  f" core, {per_core(ot):.0f} per server CPU-second)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row")
    parser.add_argument("--torrents", type=int, default=100, help="distinct info hashes")
    parser.add_argument("--peers", type=int, default=5000, help="simulated peers (all torrents)")
    parser.add_argument("--concurrency", type=int, default=64, help="announces in flight")
    parser.add_argument(
        "--keepalive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only keep-alive (--keepalive) or only new connections (--no-keepalive); default both",
    )
    parser.add_argument(
        "--generators",
        choices=("auto", "1", "2"),
        default="auto",
        help="generator processes; auto: 1, and 2 as well when 1 saturates its CPU",
    )
    parser.add_argument(
        "--client", choices=("raw", "aiohttp"), default="raw", help="generator HTTP client"
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="generator event loop (auto: uvloop when installed)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="server on the first CPU, a lone generator on the others (default on)",
    )
    parser.add_argument(
        "--only", choices=("swarmhub", "opentracker"), help="measure only this tracker"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds (trackers restarted); the median counts"
    )
    parser.add_argument(
        "--profile", type=Path, help="run our tracker under cProfile, writing stats to this file"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the info hashes")
    parser.add_argument(
        "--proto", choices=("both", "http", "udp"), default="both",
        help="HTTP rows, UDP (BEP 15) rows or both (default)",
    )
    parser.add_argument(
        "--udp-inflight", type=int, default=16,
        help="UDP announces outstanding at once (one socket, one generator)",
    )
    parser.add_argument(
        "--workers", help="measure a whole hub with these worker counts (e.g. 1,2); HTTP only"
    )
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:.0f}]")
    if not 0 < args.torrents <= args.peers <= 50000:
        parser.error("need 0 < --torrents <= --peers <= 50000 (peer ports are 10000+n)")
    if not 0 < args.rounds <= 10:
        parser.error("--rounds must be in 1..10")
    if not 0 < args.concurrency <= 4096:
        parser.error("--concurrency must be in 1..4096")
    if args.loop == "auto":
        try:
            import uvloop  # noqa: F401

            args.loop = "uvloop"
        except ImportError:
            args.loop = "asyncio"

    if not 0 < args.udp_inflight <= 4096:
        parser.error("--udp-inflight must be in 1..4096")
    modes = [True, False] if args.keepalive is None else [args.keepalive]
    if args.proto == "udp":
        modes = []
    hashes = info_hashes(args.torrents, args.seed)
    server_cpus: set[int] | None = None
    gen_cpus: set[int] | None = None
    available = sorted(os.sched_getaffinity(0))
    if args.pin and len(available) > 1:
        server_cpus, gen_cpus = {available[0]}, set(available[1:])
    print(
        f"{args.torrents} torrents, {args.peers} peers, {args.concurrency} in flight"
        f" (UDP: {args.udp_inflight}),"
        f" {args.seconds:g} s per row, client {args.client} on {args.loop},"
        f" {len(available)} CPUs, "
        + (
            f"server on CPU {sorted(server_cpus)}, one generator on {sorted(gen_cpus or ())}"
            if server_cpus
            else "not pinned"
        )
    )
    print(
        "(gen/srv CPU: cores our generators / the tracker used in the timed window; all CPU:"
        " the whole machine, kernel networking and other programs included; conns: TCP"
        " connections opened)\n"
    )
    print(HEADER)
    rows: list[Row] = []
    anchor_note: str | None = None
    binary = shutil.which("opentracker") or (
        "/usr/bin/opentracker" if os.path.exists("/usr/bin/opentracker") else None
    )
    servers = [name for name in ("swarmhub", "opentracker") if args.only in (None, name)]
    if "opentracker" in servers and binary is None:
        servers.remove("opentracker")
        anchor_note = f"opentracker: skipped, it is not installed ({OPENTRACKER_HELP})"
    if args.workers:
        ok = hub_workers(args, modes, binary, server_cpus, gen_cpus)
        if anchor_note:
            print(anchor_note)
        sys.exit(0 if ok else 1)
    for rnd in range(args.rounds):
        # Each round starts the trackers afresh; odd rounds put opentracker first.
        for name in servers if rnd % 2 == 0 else servers[::-1]:
            port = free_port()
            if name == "swarmhub":
                proc = start_ours(port, server_cpus, args.profile)
                rows += run_server(name, proc, args, port, hashes, modes, gen_cpus)
                continue
            assert binary is not None
            with tempfile.TemporaryDirectory(prefix="swarmhub-bench-") as tmpname:
                tmp = Path(tmpname)
                tmp.chmod(0o755)
                proc = start_opentracker(binary, tmp, hashes, port, server_cpus)
                rows += run_server(name, proc, args, port, hashes, modes, gen_cpus)
    ok = summary(rows, modes, anchor_note)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
