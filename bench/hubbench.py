"""A whole ``swarmhub hub`` for the benches: start it (``--workers N``, any backend), publish.

Shared by ``tracker.py --workers`` and ``origin.py --workers``: both measure the hub as an
operator runs it (catalog lookups, limits, access log), next to their anchors. The shared
servers (PostgreSQL, Redis, S3 via rclone) come from ``tests/servers.py``, the same
throwaway servers the tests start (temp folders, free loopback ports).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

__all__ = ["Hub", "free_port", "publish", "servers", "start_hub", "stop", "tree_cpu"]


def servers() -> Any:
    """``tests/servers.py`` (postgres_server, redis_server, s3_server context managers)."""
    sys.path.insert(0, str(REPO / "tests"))
    import servers as mod

    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child we started, by its PID (SIGKILL after 30 s)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its direct children (a hub's workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(stat[1]) == pid:
            total += (int(stat[11]) + int(stat[12])) / TICKS
    return total


@dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    data: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_hub(data: Path, *extra: str, workers: int = 1, seeder: bool = False,
              preexec: Callable[[], None] | None = None) -> Hub:
    """``swarmhub hub`` on a free port with per-address limits off; waits until every
    worker serves. ``extra``: backend flags (``--db``, ``--store``, ``--swarm-state``)."""
    port = free_port()
    peer = f"127.0.0.1:{free_port()}" if seeder else "off"
    cmd = [sys.executable, "-m", "swarmhub", "hub", "--data", str(data), "--listen",
           f"127.0.0.1:{port}", "--peer-listen", peer, "--tracker-peers-per-ip", "0",
           "--tracker-announce-rate", "0", "--max-upload", "4096", "--workers",
           str(workers), *extra]
    data.parent.mkdir(parents=True, exist_ok=True)
    log_path = data.with_name(data.name + ".log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    want = f"{workers} hub workers serve" if workers > 1 else "hub listening"
    deadline = time.monotonic() + 90
    token = None
    while True:
        text = log_path.read_text()
        for line in text.splitlines():
            if line.startswith("admin token: "):
                token = line.split()[-1]
        if token and want in text:
            return Hub(proc, port, token, data)
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"the hub did not start ({' '.join(cmd)}):\n{text}")
        time.sleep(0.1)


def publish(hub: Hub, name: str, data: bytes | Path) -> dict[str, str]:
    """``POST /api/files``; returns the file's JSON (id, sha256, info hashes...)."""
    payload = data.read_bytes() if isinstance(data, Path) else data
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + payload + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(hub.url + "/api/files", data=body, method="POST", headers={
        "Authorization": f"Bearer {hub.token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with _NO_PROXY.open(req, timeout=600) as r:
        out: dict[str, str] = json.loads(r.read())
        return out
