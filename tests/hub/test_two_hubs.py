"""Two real hub processes on one PostgreSQL catalog, one Redis swarm state and one blob
store (a shared folder, or S3) behave as one hub: publish on A and download through B,
one swarm for announces to either, a token revoked on B refused by A (pushed to it),
and a download cut by ``kill -9`` of A finished through B."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubproc import HubProc, api, start_hub, wait_for

from swarmhub.bencode import bdecode
from swarmhub.discovery.tracker import AnnounceRequest, build_announce_url

pytestmark = pytest.mark.slow

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(hub: HubProc, path: str, token: str, body: dict[str, Any] | None = None,
         method: str = "POST") -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(hub.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with _NO_PROXY.open(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def publish(hub: HubProc, token: str, data: bytes, name: str,
            collection: str | None = None) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    parts = []
    if collection is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n'
                     f"\r\n{collection}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                 + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(hub.url + "/api/files", data=b"".join(parts), method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with _NO_PROXY.open(req, timeout=60) as r:
        assert r.status == 201
        out: dict[str, Any] = json.loads(r.read())
        return out


def announce(hub: HubProc, info_hash: bytes, port: int, passkey: str | None = None,
             left: int = 100) -> dict[bytes, Any]:
    base = hub.url + "/announce" + (f"?passkey={passkey}" if passkey else "")
    req = AnnounceRequest(info_hash=info_hash, peer_id=os.urandom(20), port=port,
                          uploaded=0, downloaded=0, left=left)
    with _NO_PROXY.open(build_announce_url(base, req), timeout=30) as r:
        out: dict[bytes, Any] = bdecode(r.read())
        return out


def ports(blob: bytes) -> set[int]:
    return {int.from_bytes(blob[i + 4: i + 6], "big") for i in range(0, len(blob), 6)}


@pytest.fixture(params=["blob-folder", "s3"])
def two_hubs(request: pytest.FixtureRequest, tmp_path: Path, postgres: Any,
             redis_server: Any) -> Iterator[tuple[HubProc, HubProc]]:
    """Hubs A and B; their blobs in one shared folder (``--blobs``) or in S3 (where B,
    with nothing cached, streams what it serves from S3)."""
    if request.param == "s3":
        store = ["--store", request.getfixturevalue("s3").new_url()]
    else:
        store = ["--blobs", str(tmp_path / "blobs")]
    shared = ["--db", postgres.new_database(), "--swarm-state", redis_server.new_url(),
              *store, "--tracker-peers-per-ip", "0", "--tracker-announce-rate", "0"]
    a = start_hub(tmp_path / "a", tmp_path, "hub-a", *shared, "--upload-limit", "1024")
    try:
        b = start_hub(tmp_path / "b", tmp_path, "hub-b", *shared, first=False)
    except BaseException:
        a.proc.stop()
        raise
    try:
        yield a, b
    finally:
        b.proc.stop()
        a.proc.stop()


def test_two_hubs_are_one_hub(two_hubs: tuple[HubProc, HubProc]) -> None:
    a, b = two_hubs
    assert a.token is not None and b.token is None  # one catalog: one first admin token
    admin = a.token
    status, pub = call(a, "/api/tokens", admin, {"role": "publisher"})
    assert status == 201
    data = os.urandom(3 << 20)
    f = publish(a, pub["token"], data, "big.bin")

    # Published on A, listed and downloaded through B.
    status, listing = api(b, "/api/files", None)
    assert status == 200 and [x["id"] for x in listing["files"]] == [f["id"]]
    with _NO_PROXY.open(f"{b.url}/f/{f['id']}/big.bin", timeout=30) as r:
        assert hashlib.sha256(r.read()).hexdigest() == f["sha256"]

    # Announces to A and to B land in one swarm.
    ih = bytes.fromhex(f["info_hash_v1"])
    announce(a, ih, 40001)
    seen = announce(b, ih, 40002)
    assert 40001 in ports(seen[b"peers"])
    assert 40002 in ports(announce(a, ih, 40001)[b"peers"])

    # A token revoked on B is refused by A: B's catalog write reaches A by notification (the
    # PostgreSQL catalog never reloads on a timer, so without it A would accept the passkey
    # for good; test_catalog checks that path on the reload count). The deadline only
    # guards against that hang.
    assert call(a, "/api/collections", admin, {"name": "team", "private": True})[0] == 201
    secret = publish(a, pub["token"], os.urandom(1000), "s.bin", collection="team")
    status, reader = call(b, "/api/tokens", admin, {"role": "reader"})
    assert status == 201
    sih = bytes.fromhex(secret["info_hash_v1"])
    wait_for(lambda: b"failure reason" not in announce(a, sih, 40003, reader["passkey"]), 30,
             "A to accept the reader's passkey made on B")
    assert call(b, f"/api/tokens/{reader['id']}/revoke", admin)[0] == 200
    wait_for(lambda: b"failure reason" in announce(a, sih, 40003, reader["passkey"]), 30,
             "A to refuse the passkey revoked on B")
    refused = announce(a, sih, 40003, reader["passkey"])[b"failure reason"]
    assert refused == b"unknown or revoked passkey", refused
    status, _ = api(a, f"/api/files/{secret['id']}", reader["token"])
    assert status == 403  # the revoked token itself is refused by A's API at once

    # B's seeder picks up the file published on A (its catalog index told it), and
    # enters the shared swarm: a leecher announcing to either hub is sent to both seeders.
    wait_for(lambda: b.peer_port in ports(announce(a, ih, 40009)[b"peers"]), 30,
             "B's seeder to seed the file published on A")
    assert a.peer_port in ports(announce(b, ih, 40009)[b"peers"])

    # kill -9 A mid-download (A sends at 1 MiB/s), finish the rest through B.
    got = bytearray()
    with _NO_PROXY.open(f"{a.url}/f/{f['id']}/big.bin", timeout=30) as r:
        while len(got) < 256 << 10:
            got += r.read(64 << 10)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        try:
            while chunk := r.read(64 << 10):
                got += chunk
        except OSError:
            pass  # the connection died with A: what arrived is kept
    assert len(got) < len(data), "A finished before it was killed; slow it down further"
    req = urllib.request.Request(f"{b.url}/f/{f['id']}/big.bin",
                                 headers={"Range": f"bytes={len(got)}-"})
    with _NO_PROXY.open(req, timeout=30) as r:
        assert r.status == 206
        got += r.read()
    assert bytes(got) == data


async def test_seeder_admission_proofs_reach_the_other_process(
    tmp_path: Path, postgres: Any, redis_server: Any,
) -> None:
    """A passkey announce through B admits the peer to A's seeder; a revocation through
    B withdraws it (the proofs travel over Redis pub/sub, ``hub.access``)."""
    import asyncio
    import contextlib

    from test_api import live_hub
    from test_app import announce as announce_live

    shared = {"db": postgres.new_database(), "swarm_state": redis_server.new_url(),
              "tracker_peers_per_ip": 0, "tracker_announce_rate": 0}
    async with contextlib.aclosing(live_hub(tmp_path / "a", **shared)) as hubs_a, \
            contextlib.aclosing(live_hub(tmp_path / "b", **shared)) as hubs_b:
        a, b = await anext(hubs_a), await anext(hubs_b)
        pub, _ = await a.token("publisher")
        async with a.http.post(f"{a.url}/api/collections", headers=a.auth(a.admin),
                               json={"name": "team", "private": True}) as r:
            assert r.status == 201
        status, f = await a.publish(os.urandom(5000), "s.bin", pub, collection="team")
        assert status == 201
        _, reader = await a.token("reader")
        ih = bytes.fromhex(f["info_hash_v1"])
        loop = asyncio.get_running_loop()

        def admitted(now: float) -> bool:
            return any(a.hub.access.allows(f["id"], ("127.0.0.1", 7000), pid, now,
                                           outgoing=True) for pid in [b"x" * 20])

        assert not admitted(loop.time())
        # Hang guards, not margins: each wait ends on the state it waits for.
        async with asyncio.timeout(30):  # B's catalog index learns of the file first
            while b"failure reason" in await announce_live(
                    b, ih, base=f"{b.url}/announce?passkey={reader['passkey']}"):
                await asyncio.sleep(0.05)
        async with asyncio.timeout(30):
            while not admitted(loop.time()):
                await asyncio.sleep(0.01)
        # Asked at one fixed time from here on, so only the revocation, never the grant's
        # expiry, can end the admission.
        at = loop.time()
        assert admitted(at)
        async with b.http.post(f"{b.url}/api/tokens/{reader['id']}/revoke",
                               headers=b.auth(b.admin)) as r:
            assert r.status == 200
        async with asyncio.timeout(30):
            while admitted(at):
                await asyncio.sleep(0.01)
