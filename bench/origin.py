"""HTTP origin throughput: swarmhub's origin vs Debian nginx (sendfile on), same file.

    .venv/bin/python bench/origin.py [--size 512] [--rounds 3] [--workers 1] [--loop auto]

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

``--loop auto`` runs our origin on the standard asyncio loop: uvloop has no
``loop.sendfile`` (it raises NotImplementedError), so under uvloop the origin falls back
to executor reads. ``--loop uvloop`` measures that path.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Callable
from pathlib import Path

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


def download(curl: str, url: str, streams: int, size: int, cpus: set[int] | None) -> float:
    """MB/s of ``streams`` simultaneous curl downloads (total bytes / wall time)."""
    argv = [curl, "-s", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url]
    pin = pinned(cpus)
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, preexec_fn=pin) for _ in range(streams)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    wall = time.perf_counter() - start
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0 or int(out or b"0") != size:
            raise SystemExit(f"a download from {url} failed: exit {p.returncode}, {out!r} bytes")
    return streams * size / wall / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="file size in MiB (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median counts")
    parser.add_argument("--workers", type=int, default=1, help="processes per server")
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
        serve(args.serve, args.port, args.workers, loop_kind)
        return

    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None
    )
    if nginx is None:
        raise SystemExit(NGINX_HELP)
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed (apt-get install -y curl)")

    size = args.size * MiB
    streams = tuple(int(n) for n in args.streams.split(","))
    server_cpus: set[int] | None = None
    client_cpus: set[int] | None = None
    available = sorted(os.sched_getaffinity(0))
    if args.pin and len(available) > args.workers:
        server_cpus = set(available[: args.workers])
        client_cpus = set(available[args.workers :])
    results: dict[tuple[str, int], list[float]] = {
        (who, n): [] for who in ("hub", "nginx") for n in streams
    }
    with tempfile.TemporaryDirectory(prefix="swarmhub-bench-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        root = tmp / "www"
        root.mkdir(mode=0o755)
        write_random(root / "data.bin", size)
        (root / "data.bin").chmod(0o644)
        ours_port, nginx_port = free_port(), free_port()
        ours = start_ours(root, ours_port, args.workers, loop_kind, server_cpus)
        try:
            ng = start_nginx(nginx, tmp, root, nginx_port, args.workers, server_cpus)
            try:
                urls = {
                    "hub": f"http://127.0.0.1:{ours_port}/data.bin",
                    "nginx": f"http://127.0.0.1:{nginx_port}/data.bin",
                }
                for url in urls.values():  # warm up: our content-hash ETag, page cache
                    download(curl, url, 1, size, client_cpus)
                print(
                    f"{args.size} MiB file, {args.rounds} rounds, {args.workers} worker(s) each, "
                    f"our loop: {loop_kind}, "
                    + (
                        f"servers on CPUs {sorted(server_cpus)}, clients on {sorted(client_cpus)}"
                        if server_cpus and client_cpus
                        else "not pinned"
                    )
                )
                for rnd in range(args.rounds):
                    order = ("hub", "nginx") if rnd % 2 == 0 else ("nginx", "hub")
                    for n in streams:
                        for who in order:
                            mbs = download(curl, urls[who], n, size, client_cpus)
                            results[who, n].append(mbs)
                            print(f"  round {rnd + 1}: {who:5} {n} stream(s) {mbs:8.0f} MB/s")
            finally:
                stop(ng, signal.SIGQUIT)
        finally:
            stop(ours)

    ok = True
    print(
        f"\n{'streams':>7} {'hub MB/s':>10} {'nginx MB/s':>11} {'hub/nginx':>10}"
        f" {'(best rounds:':>14} {'hub':>6} {'nginx':>6} {'ratio)':>7}"
    )
    for n in streams:
        hub = statistics.median(results["hub", n])
        ngx = statistics.median(results["nginx", n])
        ratio = hub / ngx
        ok &= ratio >= REQUIRED_RATIO
        best_hub, best_ngx = max(results["hub", n]), max(results["nginx", n])
        print(
            f"{n:>7} {hub:>10.0f} {ngx:>11.0f} {ratio:>10.2f}"
            f" {'':>14} {best_hub:>6.0f} {best_ngx:>6.0f} {best_hub / best_ngx:>6.2f}"
        )
    print(f"required hub/nginx >= {REQUIRED_RATIO}: {'met' if ok else 'NOT met'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
