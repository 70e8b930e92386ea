"""A real ``swarmhub hub`` process for operator and crash tests, and checks of its data folder."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port
from interop.harness import VENV_PYTHON, Proc, wait_listening

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class HubProc:
    proc: Proc
    url: str
    peer_port: int
    data: Path
    #: The admin token this start printed (first start only), else None.
    token: str | None


def cli(work: Path, name: str, *args: str, timeout: float = 60) -> Proc:
    """Run ``swarmhub ARGS`` to completion (bounded); the caller reads ``.returncode``."""
    proc = Proc([*SWARMHUB, *args], name=name, log=work / f"{name}.log")
    proc.wait(timeout)
    return proc


def start_hub(
    data: Path, work: Path, name: str, *extra: str, env: dict[str, str] | None = None,
    first: bool = True,
) -> HubProc:
    """Start a hub on free ports and wait until it listens (and printed its token if ``first``)."""
    port, peer_port = free_port(), free_port()
    proc = Proc(
        [*SWARMHUB, "hub", "--data", str(data), "--listen", f"127.0.0.1:{port}",
         "--peer-listen", f"127.0.0.1:{peer_port}", *extra],
        env={**os.environ, **(env or {})}, name=name, log=work / f"{name}.log",
    )
    try:
        proc.wait_for_line(lambda s: "hub listening" in s, 60)
        token = None
        if first:
            line = proc.wait_for_line(lambda s: "admin token:" in s, 30)
            m = re.search(r"admin token: (\S+)", line)
            assert m is not None, proc.describe()
            token = m.group(1)
        wait_listening(port, 30, proc)
    except BaseException:
        proc.stop()
        raise
    return HubProc(proc, f"http://127.0.0.1:{port}", peer_port, data, token)


def api(hub: HubProc, path: str, token: str | None, method: str = "GET") -> tuple[int, Any]:
    """One JSON API call; returns the status and the decoded body."""
    req = urllib.request.Request(hub.url + path, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _NO_PROXY.open(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def catalog_rows(data: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on a hub's catalog (the hub may be running: WAL allows a reader)."""
    db = sqlite3.connect(data / "catalog.sqlite3")
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def loose_modes(data: Path) -> list[str]:
    """Paths under a hub's data folder that group or others may read, write or enter."""
    found = []
    for path in [data, *data.rglob("*")]:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            found.append(f"{path.relative_to(data.parent)} {stat.S_IMODE(st.st_mode):o}")
    return found
