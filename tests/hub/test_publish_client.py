"""``swarmhub publish``'s upload (:func:`swarmhub.hub.commands.publish_file`) through
swarmhub's own HTTP client: a multipart body streamed from the file, an early refusal
read as the answer, and cancels that leave no unread TLS failure under uvloop."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_api import Live, live_hub

from conftest import unread_failures_under_uvloop
from swarmhub.hub.commands import _UPLOAD_CHUNK, publish_file


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async for x in live_hub(tmp_path, max_upload_size=8 << 20):
        yield x


async def test_publish_streams_the_file_in_chunks_with_its_name_and_collection(
        live: Live, tmp_path: Path) -> None:
    """Several read chunks, a name with a quote and non-ASCII letters (sent in the
    ``name`` field, exact bytes), into a collection; the hub stores the same bytes."""
    token, _ = await live.token("publisher")
    async with live.http.post(f"{live.url}/api/collections", json={"name": "docs"},
                              headers=live.auth(live.admin)) as r:
        assert r.status == 201, await r.text()
    data = hashlib.shake_256(b"publish").digest(2 * _UPLOAD_CHUNK + 12345)
    path = tmp_path / 'rapport "été".bin'
    path.write_bytes(data)
    info = await publish_file(path, live.url, token, collection="docs")
    assert info["name"] == path.name and info["size"] == len(data)
    assert info["collection"] == "docs"
    async with live.http.get(info["url"]) as r:
        assert await r.read() == data


async def test_a_refused_token_is_the_answer_not_a_broken_upload(live: Live,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(6 << 20))
    with pytest.raises(RuntimeError, match="hub answered 403"):
        await publish_file(path, live.url, "not-a-token")


def test_cancelling_an_https_publish_leaves_no_unread_tls_failure_under_uvloop(
        tmp_path: Path) -> None:
    """As the HTTP client's own test: ``publish --hub https://...`` to a plain-HTTP
    server, cancelled after 1-6 turns of the loop. aiohttp's connect
    (``create_connection(ssl=...)``) under uvloop left the handshake's failure unread."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)

    async def tries(base: str) -> None:
        for i in range(300):
            task = asyncio.ensure_future(publish_file(path, base, "t"))
            for _ in range(1 + i % 6):  # on loopback the TCP connect took 2-3
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert unread_failures_under_uvloop(tries) == []
