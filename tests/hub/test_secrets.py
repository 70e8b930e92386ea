"""No secret in the hub's log at any level; the access log counts the bytes really sent.

A real hub process with ``-vv`` (debug: aiohttp's access log, our tracker client
announcing for the embedded seeder) serves a private file every way there is: a token
in the query and in the header, a passkey in the announce URL and in the web seed path,
a wrong token. Then its log must hold none of those secrets, and the access log line of
a 3 MB sendfile download must say 3 MB.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from hubprocess import HubProcess, start_hub_process

from interop.harness import free_port
from swarmhub.hub.redact import REDACTED, redact
from swarmhub.metainfo import load_torrent

SIZE = 3 << 20


def test_redact_covers_every_form() -> None:
    secret = "s3cr3t-VALUE_x"
    cases = [
        f"GET /f/abc/x.bin?token={secret} HTTP/1.1",
        f"GET /announce?info_hash=%01&passkey={secret}&port=1 HTTP/1.1",
        f"GET /k/{secret}/abc/x.bin HTTP/1.1",
        f"tracker http://h/announce?passkey%3D{secret} failed",
        f"Authorization: Bearer {secret}",
        f"http://h/f/x?a=1&TOKEN={secret}#frag",
    ]
    for line in cases:
        clean = redact(line)
        assert secret not in clean and REDACTED in clean, clean
    assert redact("GET /api/files?limit=5 HTTP/1.1") == "GET /api/files?limit=5 HTTP/1.1"


async def _exercise(hub: HubProcess) -> tuple[list[str], str]:
    """Use every secret-carrying path once; returns the secrets and the file's URL path."""
    admin = {"Authorization": f"Bearer {hub.token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def make_token(role: str) -> str:
            async with http.post(f"{hub.url}/api/tokens", json={"role": role}, headers=admin) as r:
                assert r.status == 201
                return str((await r.json())["token"])

        reader, publisher = await make_token("reader"), await make_token("publisher")
        async with http.post(
            f"{hub.url}/api/collections", json={"name": "vault", "private": True}, headers=admin
        ) as r:
            assert r.status == 201
        form = aiohttp.FormData()
        form.add_field("collection", "vault")
        form.add_field("file", os.urandom(SIZE), filename="big.bin")
        async with http.post(
            f"{hub.url}/api/files", data=form, headers={"Authorization": f"Bearer {publisher}"}
        ) as r:
            assert r.status == 201, await r.text()
            file_id = (await r.json())["id"]
        async with http.get(f"{hub.url}/t/{file_id}.torrent?token={reader}") as r:
            meta = load_torrent(await r.read())
        announce = meta.trackers[0][0]
        passkey = urllib.parse.parse_qs(urllib.parse.urlsplit(announce).query)["passkey"][0]
        path = f"/f/{file_id}/big.bin"
        async with http.get(f"{hub.url}{path}?token={reader}") as r:
            assert r.status == 200 and len(await r.read()) == SIZE
        async with http.get(f"{hub.url}/k/{passkey}/{file_id}/big.bin") as r:
            assert r.status == 200 and len(await r.read()) == SIZE
        ih = urllib.parse.quote_from_bytes(meta.info_hash_v1 or b"")
        query = f"info_hash={ih}&peer_id={'-XX0001-' + 'a' * 12}&port=7000&left=1"
        async with http.get(f"{announce}&{query}") as r:
            assert b"failure" not in await r.read()
        wrong = "wrong-" + os.urandom(8).hex()
        async with http.get(f"{hub.url}/api/me", headers={"Authorization": f"Bearer {wrong}"}) as r:
            assert r.status == 403
        async with http.get(f"{hub.url}{path}?token={wrong}") as r:
            assert r.status == 403
    return [hub.token, reader, publisher, passkey, wrong], path


def _wait_for_log(hub: HubProcess, pattern: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, hub.log_text())) < count:
        assert time.monotonic() < deadline, f"{pattern!r} x{count} not logged\n{hub.log_text()}"
        time.sleep(0.05)


@pytest.mark.slow
async def test_log_at_debug_level_holds_no_secret_and_real_byte_counts(tmp_path: Path) -> None:
    hub = await asyncio.to_thread(
        start_hub_process, tmp_path, "-vv", "--peer-listen", f"127.0.0.1:{free_port()}"
    )
    try:
        secrets, path = await _exercise(hub)
        # Our announce (the embedded seeder enters its swarms in-process: no passkey of its own).
        await asyncio.to_thread(_wait_for_log, hub, r'"GET /announce\?passkey=REDACTED', 1)
    finally:
        hub.proc.stop()
    text = hub.log_text()
    for secret in secrets:
        assert secret not in text
    assert not re.search(r"passkey(=|%3D)(?!REDACTED)", text), text
    assert not re.search(r"/k/(?!REDACTED)", text), text
    assert "failed login from 127.0.0.1" in text
    m = re.search(rf'"GET {re.escape(path)}\?token=REDACTED HTTP/1.1" 200 (\d+)', text)
    assert m is not None, text
    assert int(m.group(1)) >= SIZE  # body (sent with sendfile) plus headers
    m = re.search(r'"GET /k/REDACTED/\S+ HTTP/1.1" 200 (\d+)', text)
    assert m is not None and int(m.group(1)) >= SIZE
