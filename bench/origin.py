"""HTTP origin throughput: swarmhub's origin vs Debian nginx (sendfile on), same file.

    .venv/bin/python bench/origin.py [--size 512] [--rounds 3] [--workers 1,2] [--loop auto]
        [--configs static,local,pg-s3,redirect] [--streams 1,8]

Why this shape: one random file in a temp folder (page-cached after it is written, so
both servers measure sending, not the disk); our origin is ``make_static_app`` in a
separate process (as the hub runs), nginx a child process with a generated minimal
config (``sendfile on``, access log off); both get the same number of worker processes
(``--workers``, default 1: our origin is one asyncio process). Clients are ``curl``
downloads to /dev/null, 1 and 8 at once, each checked for the full byte count; rounds
alternate which server goes first; each figure is the median round (the best round is
printed too: outside load only ever slows a round down). MB = 10^6 bytes.

On a small machine the scheduler's placement of server and client dominates the noise
(the same server measured 1.8-3.3 GB/s back to back), so by default (``--pin``, when
there are more CPUs than server workers) the servers run on the first CPUs and the curl
clients on the others, identically for both servers; ``--no-pin`` leaves placement to
the kernel.

``--workers 1,2`` measures each worker count in the same run (nginx with as many worker
processes). ``--configs`` adds whole hubs (``bench/hubbench.py``) next to the origin app
alone (``static``): ``local`` (embedded defaults, ``/f/<id>``), ``pg-s3`` (PostgreSQL
catalog, S3 blobs on ``rclone serve s3``; two rows: the blob in every worker's local
cache, and streamed from S3 through the hub), ``redirect`` (``--s3-redirect``: curl
follows the 307 and downloads from rclone itself). With more than one worker the hubs
use a Redis swarm state. PostgreSQL, Redis and rclone are the tests' throwaway servers
(``tests/servers.py``) and are not pinned: on a small machine they compete with the hub.

``--loop auto`` runs our origin on the standard asyncio loop: uvloop has no
``loop.sendfile`` (it raises NotImplementedError), so under uvloop the origin falls back
to executor reads. ``--loop uvloop`` measures that path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

__all__ = ["main"]

MiB = 1 << 20
REQUIRED_RATIO = 0.9
NGINX_HELP = (
    "nginx is not installed; install Debian's nginx with `apt-get install -y nginx-light` "
    "(or `apt-get install -y nginx`) and run the bench again"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child we started, by its PID."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            fh.write(chunk)
            left -= len(chunk)


# --- our origin (child process) --------------------------------------------------------


def serve(root: Path, port: int, workers: int, loop_kind: str) -> None:
    """Run make_static_app on 127.0.0.1:port; ``workers`` processes share it (SO_REUSEPORT)."""
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:  # a worker: serves, and forks nothing more
            children = []
            break
        children.append(pid)
    if loop_kind == "uvloop":
        import uvloop

        uvloop.install()
    from aiohttp import web

    from swarmhub.hub.origin import make_static_app

    async def run() -> None:
        runner = web.AppRunner(make_static_app(root), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=1024)
        await site.start()
        stop_event = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_event.set)
        await stop_event.wait()
        await runner.cleanup()

    try:
        asyncio.run(run())
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins a child (and what it forks) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_ours(
    root: Path, port: int, workers: int, loop_kind: str, cpus: set[int] | None
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--serve", str(root), "--port", str(port)]
    argv += ["--workers", str(workers), "--loop", loop_kind]
    proc = subprocess.Popen(argv, preexec_fn=pinned(cpus))
    wait_listening(port, proc)
    return proc


# --- nginx (child process) -------------------------------------------------------------


def start_nginx(
    nginx: str, tmp: Path, root: Path, port: int, workers: int, cpus: set[int] | None
) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    temps = "\n".join(
        f"    {name}_temp_path {tmp / name};" for name in ("client_body", "proxy", "fastcgi")
    )
    user = "user root root;" if os.geteuid() == 0 else ""
    conf.write_text(
        textwrap.dedent(
            f"""\
            {user}
            worker_processes {workers};
            pid {tmp / "nginx.pid"};
            error_log {tmp / "nginx-error.log"} warn;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                keepalive_timeout 30;
                default_type application/octet-stream;
            {{temps}}
                server {{
                    listen 127.0.0.1:{port};
                    root {root};
                    location / {{ }}
                }}
            }}
            """
        ).replace("{temps}", temps)
    )
    argv = [nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    proc = subprocess.Popen(argv, preexec_fn=pinned(cpus))
    try:
        wait_listening(port, proc)
    except SystemExit:
        log = tmp / "nginx-error.log"
        print(log.read_text() if log.exists() else "(no nginx error log)", file=sys.stderr)
        raise
    return proc


# --- clients ---------------------------------------------------------------------------


def download(
    curl: str, url: str, streams: int, size: int, cpus: set[int] | None, follow: bool = False
) -> float:
    """MB/s of ``streams`` simultaneous curl downloads (total bytes / wall time)."""
    argv = [curl, "-s", "--fail", "--noproxy", "*", "-o", "/dev/null", "-w", "%{size_download}"]
    argv += ["-L", url] if follow else [url]
    pin = pinned(cpus)
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, preexec_fn=pin) for _ in range(streams)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    wall = time.perf_counter() - start
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0 or int(out or b"0") != size:
            raise SystemExit(f"a download from {url} failed: exit {p.returncode}, {out!r} bytes")
    return streams * size / wall / 1e6


@dataclass
class Target:
    """One server under test at one worker count: its URL and what to do before a round."""

    name: str
    workers: int
    url: str
    before: Callable[[], None] = lambda: None
    follow: bool = False


def hub_targets(
    args: argparse.Namespace, workers: int, data: Path, tmp: Path, shared: Any,
    cpus: set[int] | None, procs: list[subprocess.Popen[bytes]],
) -> list[Target]:
    """Whole hubs (``bench/hubbench.py``) serving ``data``: embedded (local), and on
    PostgreSQL + S3 with the blob in each worker's cache, streamed from S3, or redirected."""
    import hubbench

    out: list[Target] = []
    configs = args.configs.split(",")
    pin = pinned(cpus)
    for config in ("local", "pg-s3", "redirect"):
        if config not in configs:
            continue
        extra: list[str] = []
        if workers > 1:
            extra += ["--swarm-state", shared.redis.new_url()]
        if config != "local":
            extra += ["--db", shared.postgres.new_database(), "--store", shared.s3.new_url()]
        if config == "redirect":
            extra.append("--s3-redirect")
        hub = hubbench.start_hub(tmp / f"hub-{config}-{workers}", *extra, workers=workers,
                                 preexec=pin)
        procs.append(hub.proc)
        record = hubbench.publish(hub, "data.bin", data)
        url = f"{hub.url}/f/{record['id']}"
        sha = record["sha256"]
        caches = [hub.data / "blobs" / sha[:2] / sha] + [
            hub.data / "workers" / str(i) / "blobs" / sha[:2] / sha for i in range(1, workers)]

        def cached(caches: list[Path] = caches) -> None:
            for path in caches:  # every worker serves the blob from its cache (sendfile)
                if not path.exists():
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    shutil.copyfile(data, path)
                    path.chmod(0o400)

        def uncached(caches: list[Path] = caches) -> None:
            for path in caches:
                path.unlink(missing_ok=True)

        if config == "local":
            out.append(Target("hub local", workers, url, follow=True))
        elif config == "pg-s3":
            out.append(Target("pg+s3 cached", workers, url, cached, follow=True))
            out.append(Target("pg+s3 streamed", workers, url, uncached, follow=True))
        else:
            out.append(Target("pg+s3 redirect", workers, url, uncached, follow=True))
    return out


@dataclass
class Shared:
    postgres: Any = None
    redis: Any = None
    s3: Any = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="file size in MiB (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median counts")
    parser.add_argument(
        "--workers", default="1", help="processes per server, a list (e.g. 1,2)"
    )
    parser.add_argument(
        "--configs", default="static",
        help="ours: static (the origin app alone), local (a whole hub, embedded), pg-s3"
        " (a hub on PostgreSQL + S3: cached and streamed rows), redirect (--s3-redirect);"
        " comma-separated (default static)",
    )
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="our event loop"
    )
    parser.add_argument(
        "--streams",
        default="1,8",
        help="comma-separated numbers of simultaneous downloads (default 1,8)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="servers on the first CPUs, clients on the rest (default on when possible)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    loop_kind = "asyncio" if args.loop == "auto" else args.loop
    if args.serve is not None:
        serve(args.serve, args.port, int(args.workers), loop_kind)
        return

    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None
    )
    if nginx is None:
        raise SystemExit(NGINX_HELP)
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed (apt-get install -y curl)")
    counts = [int(w) for w in args.workers.split(",")]
    configs = args.configs.split(",")
    unknown = set(configs) - {"static", "local", "pg-s3", "redirect"}
    if unknown or not counts or min(counts) < 1:
        parser.error(f"--configs: unknown {sorted(unknown)}" if unknown else "--workers: >= 1")

    size = args.size * MiB
    streams = tuple(int(n) for n in args.streams.split(","))
    available = sorted(os.sched_getaffinity(0))
    results: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarmhub-bench-")))
        tmp.chmod(0o755)
        shared = Shared()
        hubs = [c for c in configs if c != "static"]
        if hubs:
            import hubbench

            mod = hubbench.servers()
            if max(counts) > 1:
                shared.redis = stack.enter_context(mod.redis_server())
            if set(hubs) - {"local"}:
                shared.postgres = stack.enter_context(mod.postgres_server())
                shared.s3 = stack.enter_context(mod.s3_server())
        stack.callback(lambda: [stop(p, signal.SIGQUIT if p.args[0] == nginx else
                                     signal.SIGTERM) for p in reversed(procs)])
        root = tmp / "www"
        root.mkdir(mode=0o755)
        write_random(root / "data.bin", size)
        (root / "data.bin").chmod(0o644)
        targets: list[Target] = []
        pins: dict[int, tuple[set[int] | None, set[int] | None]] = {}
        for workers in counts:
            server_cpus: set[int] | None = None
            client_cpus: set[int] | None = None
            if args.pin and len(available) > workers:
                server_cpus = set(available[:workers])
                client_cpus = set(available[workers:])
            pins[workers] = (server_cpus, client_cpus)
            if "static" in configs:
                port = free_port()
                procs.append(start_ours(root, port, workers, loop_kind, server_cpus))
                targets.append(Target("static", workers, f"http://127.0.0.1:{port}/data.bin"))
            targets += hub_targets(args, workers, root / "data.bin", tmp, shared, server_cpus,
                                   procs)
            port = free_port()
            ngtmp = tmp / f"nginx-{workers}"
            ngtmp.mkdir(mode=0o755)
            procs.append(start_nginx(nginx, ngtmp, root, port, workers, server_cpus))
            targets.append(Target("nginx", workers, f"http://127.0.0.1:{port}/data.bin"))
        for t in targets:  # warm up: our content-hash ETag, page cache, S3's folder
            t.before()
            download(curl, t.url, 1, size, pins[t.workers][1], t.follow)
        print(
            f"{args.size} MiB file, {args.rounds} rounds, workers {counts} each, our loop:"
            f" {loop_kind}; pinning: "
            + ", ".join(f"{w} worker(s): servers on CPUs {sorted(s)}, clients on {sorted(c)}"
                        if s and c else f"{w} worker(s): not pinned"
                        for w, (s, c) in pins.items())
        )
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for n in streams:
                for t in order:
                    t.before()
                    mbs = download(curl, t.url, n, size, pins[t.workers][1], t.follow)
                    results[t.name, t.workers, n].append(mbs)
                    print(f"  round {rnd + 1}: {t.name:14} w={t.workers} {n} stream(s)"
                          f" {mbs:8.0f} MB/s", flush=True)

    ok = True
    print(f"\nmedian of {args.rounds} rounds, MB/s (best round in brackets); ratio: ours/nginx"
          " at the same worker count")
    print(f"{'server':<16} {'workers':>7} {'streams':>7} {'MB/s':>8} {'(best)':>8} {'/nginx':>7}")
    names = list(dict.fromkeys(t.name for t in targets))
    for workers in counts:
        for n in streams:
            ngx = statistics.median(results["nginx", workers, n])
            for name in names:
                values = results.get((name, workers, n))
                if not values:
                    continue
                mid = statistics.median(values)
                ratio = mid / ngx
                if name in ("static", "hub local"):
                    ok &= ratio >= REQUIRED_RATIO
                print(f"{name:<16} {workers:>7} {n:>7} {mid:>8.0f} {max(values):>8.0f}"
                      f" {ratio:>7.2f}")
    print(f"required static and hub local / nginx >= {REQUIRED_RATIO}:"
          f" {'met' if ok else 'NOT met'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
