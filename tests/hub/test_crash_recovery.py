"""``kill -9`` of a real hub at five points of a publish, then a restart: nothing orphaned.

The kill is triggered on state, not time: during the upload the test waits until the
hub's temp file holds bytes; at the other points the hub runs with the test-only hook
``SWARMHUB_TEST_PAUSE_AT=<point>:<marker>`` (``swarmhub.hub.testhooks``), which writes the
marker and blocks that publish there. After the restart the catalog and the disk must
agree (every blob, seed folder and resume file belongs to a row and every row has its
blob), ``/api/stats`` must count what is on disk, the start-up log has its one storage
line, and publishing the same file again must work.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from hubproc import SWARMHUB, HubProc, api, catalog_rows, cli, loose_modes, start_hub, wait_for

from interop.harness import Proc
from swarmhub.hub.testhooks import ENV as PAUSE_ENV

pytestmark = pytest.mark.timeout(240)

SIZE = 3 << 20


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _partial_upload(hub: HubProc, token: str, data: bytes) -> socket.socket:
    """Send headers and two thirds of a multipart upload, then hold the connection."""
    boundary = "crashtestboundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
        f"filename=\"payload.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    port = int(hub.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        (
            f"POST /api/files HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + len(data) + len(tail)}\r\n\r\n"
        ).encode()
        + head
        + data[: len(data) * 2 // 3]
    )
    return sock


def _check_consistent(
    hub: HubProc, token: str, crash_temps: set[str]
) -> list[tuple[str, str, str, int]]:
    """Catalog and disk agree; /api/stats counts what is stored. Returns the catalog rows.

    ``crash_temps``: half-written resume files the crash left, which must be gone (the
    running seeder may have temp files of its own at any moment).
    """
    data = hub.data
    rows = catalog_rows(data, "SELECT id, name, sha256, size FROM files")
    blobs = {p.name: p.stat().st_size for p in _files_in(data / "blobs")}
    assert set(blobs) == {sha for _, _, sha, _ in rows}, (blobs, rows)
    seed_dir = data / "seed"
    folders = list(seed_dir.iterdir()) if seed_dir.exists() else []
    seed = {d.name: sorted(p.name for p in d.iterdir()) for d in folders}
    assert seed == {fid: [name] for fid, name, _, _ in rows}, (seed, rows)
    assert _files_in(data / "tmp") == []
    state = {p.name for p in _files_in(data / "seed-state")}
    assert not state & crash_temps, state
    known = {
        h.lower()
        for row in catalog_rows(data, "SELECT hex(info_hash_v1), hex(info_hash_v2), "
                                "hex(info_hash_v1_torrent) FROM files")
        for h in row if h
    }
    for name in state:
        if name.endswith(".resume"):
            assert name.split("-")[0] in known | {h[:40] for h in known}, (name, known)
    status, stats = api(hub, "/api/stats", token)
    assert status == 200, stats
    assert stats["files"] == len(rows) and stats["missing_blobs"] == 0, stats
    assert stats["blobs"] == len(blobs) and stats["blob_bytes"] == sum(blobs.values()), stats
    assert loose_modes(data) == []
    return rows


@pytest.mark.parametrize("point", ["upload", "hashing", "torrent", "catalog", "seeding"])
def test_kill_9_during_publish_leaves_nothing_behind(tmp_path: Path, point: str) -> None:
    data_dir = tmp_path / "data"
    payload = tmp_path / "payload.bin"
    content = os.urandom(SIZE)
    payload.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    marker = tmp_path / "paused"
    env = {} if point == "upload" else {PAUSE_ENV: f"{point}:{marker}"}
    hub = start_hub(data_dir, tmp_path, "hub1", env=env)
    token = hub.token
    assert token is not None
    publisher: Proc | None = None
    sock: socket.socket | None = None
    try:
        if point == "upload":
            sock = _partial_upload(hub, token, content)
            wait_for(lambda: any(p.stat().st_size for p in _files_in(data_dir / "tmp")), 30,
                     "the upload's temp file to hold bytes")
        else:
            publisher = Proc(
                [*SWARMHUB, "publish", str(payload), "--hub", hub.url, "--token", token],
                name="publish", log=tmp_path / "publish.log",
            )
            wait_for(marker.exists, 60, f"the hub to pause at {point!r}")
        os.kill(hub.proc.pid, signal.SIGKILL)
        hub.proc.wait(30)
    finally:
        hub.proc.stop()
        if sock is not None:
            sock.close()
        if publisher is not None:
            publisher.stop()

    # What the crash left (the state each point is about), private even mid-publish.
    assert loose_modes(data_dir) == []
    rows = catalog_rows(data_dir, "SELECT id FROM files")
    crash_temps = {p.name for p in _files_in(data_dir / "seed-state") if p.name.endswith(".tmp")}
    blob = data_dir / "blobs" / sha[:2] / sha
    if point == "upload":
        assert rows == [] and _files_in(data_dir / "tmp") and not blob.exists()
    elif point in ("hashing", "torrent"):
        assert rows == [] and blob.exists() and _files_in(data_dir / "seed")
    else:
        assert len(rows) == 1 and blob.exists()

    again = start_hub(data_dir, tmp_path, "hub2", first=False)
    try:
        log_text = again.proc.output()
        storage_lines = [ln for ln in log_text.splitlines() if "storage check:" in ln]
        removed = 0
        if storage_lines:
            m = re.search(r"removed (\d+) leftover", storage_lines[0])
            assert m is not None, storage_lines
            removed = int(m.group(1))
        assert len(storage_lines) <= 1, log_text
        if point in ("upload", "hashing", "torrent"):
            assert removed >= 1, log_text  # counted in the one log line
        assert "Traceback" not in log_text, log_text
        before = _check_consistent(again, token, crash_temps)
        assert len(before) == (0 if point in ("upload", "hashing", "torrent") else 1)

        # Publishing the same file again works (a dedup hit when the row survived).
        pub = cli(tmp_path, "publish-again", "publish", str(payload), "--hub", again.url,
                  "--token", token)
        assert pub.returncode == 0, pub.describe()
        url = re.search(r"http:\s+(\S+)", pub.output())
        assert url is not None, pub.output()
        after = _check_consistent(again, token, crash_temps)
        assert len(after) == 1 and after[0][2] == sha
        if before:
            assert after[0][0] == before[0][0]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url.group(1), timeout=30) as r:
            assert hashlib.sha256(r.read()).hexdigest() == sha
    finally:
        again.proc.stop()

