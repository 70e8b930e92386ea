"""Blobs in a real S3 server (rclone): uploads land in S3 before the catalog row, a hub
without a local copy streams ranges from S3 (or redirects to a presigned URL), and the
seeder's local copy is fetched and verified."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_api import Live, live_hub

from swarmhub.errors import StorageError
from swarmhub.hub import blobs_s3
from swarmhub.hub.blobs_s3 import S3BlobStore, parse_s3_url


@pytest.fixture
def store(tmp_path: Path, s3: Any) -> Iterator[tuple[S3BlobStore, str]]:
    url = s3.new_url()
    st = S3BlobStore(url, tmp_path / "cache")
    yield st, url
    st.close()


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i:i + (1 << 20)]


def test_url_forms() -> None:
    loc = parse_s3_url("s3://bkt/a/b?endpoint=http://h:9000&region=eu-west-1")
    assert (loc.bucket, loc.prefix, loc.endpoint, loc.region) == (
        "bkt", "a/b", "http://h:9000", "eu-west-1")
    with pytest.raises(StorageError, match="s3://"):
        parse_s3_url("http://bkt/x")


async def test_commit_uploads_then_caches_and_delete_removes_both(
    store: tuple[S3BlobStore, str], s3: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    st, url = store
    monkeypatch.setattr(blobs_s3, "PART_SIZE", 5 << 20)  # 12 MiB: a 3-part upload
    data = os.urandom(12 << 20)
    staged = await st.stage(_stream(data), 64 << 20)
    info = await asyncio.to_thread(st.commit, staged)
    obj = s3.object_path(url, st.key(info.sha256))
    assert obj.read_bytes() == data  # in S3 (rclone's folder), byte for byte
    assert info.path.read_bytes() == data and not list(st.tmp_dir.iterdir())
    assert await asyncio.to_thread(st.remote_size, info.sha256) == len(data)
    assert await asyncio.to_thread(st.delete, info.sha256)
    assert not obj.exists() and not info.path.exists()
    assert not await asyncio.to_thread(st.exists, info.sha256)


async def test_fetch_restores_the_local_copy_and_refuses_other_bytes(
    store: tuple[S3BlobStore, str], s3: Any,
) -> None:
    st, url = store
    data = os.urandom(300_000)
    info = await asyncio.to_thread(st.commit, await st.stage(_stream(data), 1 << 20))
    info.path.unlink()
    assert (await asyncio.to_thread(st.fetch, info.sha256)).read_bytes() == data
    info.path.unlink()
    s3.put(url, st.key(info.sha256), b"tampered")  # S3 now holds other bytes there
    with pytest.raises(StorageError, match="other bytes"):
        await asyncio.to_thread(st.fetch, info.sha256)
    assert not info.path.exists() and not list(st.tmp_dir.iterdir())


@pytest.fixture(params=[False, True], ids=["stream", "redirect"])
async def s3_live(request: pytest.FixtureRequest, tmp_path: Path,
                  s3: Any) -> AsyncIterator[Live]:
    hub = live_hub(tmp_path, store=s3.new_url(), s3_redirect=request.param)
    async with contextlib.aclosing(hub) as hubs:
        x = await anext(hubs)
        yield x


async def test_uncached_blobs_are_served_from_s3_with_ranges(s3_live: Live) -> None:
    live = s3_live
    data = os.urandom(3 << 20)
    status, f = await live.publish(data, "big.bin", live.admin)
    assert status == 201, f
    blob = live.data_dir / "blobs" / f["sha256"][:2] / f["sha256"]
    blob.unlink()  # this hub has no copy: S3 must serve it
    url = f"{live.url}/f/{f['id']}/big.bin"
    async with live.http.get(url) as r:
        assert r.status == 200 and hashlib.sha256(await r.read()).hexdigest() == f["sha256"]
    async with live.http.get(url, headers={"Range": "bytes=1000-2999999"}) as r:
        # (rclone's S3 answers a ranged GET with the right bytes and Content-Range but
        # status 200, where AWS and MinIO send 206; the hub itself always sends 206.)
        assert r.status == (200 if live.hub.config.s3_redirect else 206)
        assert await r.read() == data[1000:3000000]
        assert r.headers["Content-Range"] == f"bytes 1000-2999999/{len(data)}"
    if live.hub.config.s3_redirect:
        async with live.http.get(url, allow_redirects=False) as r:
            assert r.status == 307 and "Signature" in r.headers["Location"]
        return
    async with live.http.get(url, headers={"Range": "bytes=0-9,-10"}) as r:
        body = await r.read()
        assert r.status == 206 and r.headers["Content-Type"].startswith("multipart/byteranges")
        assert data[:10] in body and data[-10:] in body
    async with live.http.get(url) as r:
        etag = r.headers["ETag"]
    async with live.http.get(url, headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    async with live.http.head(url) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
    assert not blob.exists()  # streamed through, not cached


async def test_a_restarted_hub_with_an_empty_cache_is_not_missing_blobs(
    tmp_path: Path, s3: Any, postgres: Any,
) -> None:
    """A second hub (own data folder, same catalog and store) has no local copies: its
    start-up check asks S3, and its seeder fetches a copy to seed from."""
    shared = {"db": postgres.new_database(), "store": s3.new_url()}
    data = os.urandom(200_000)
    async with contextlib.aclosing(live_hub(tmp_path / "a", **shared)) as hubs:
        a = await anext(hubs)
        status, f = await a.publish(data, "x.bin", a.admin)
        assert status == 201
    second = live_hub(tmp_path / "b", peer_listen=("127.0.0.1", 0), **shared)
    async with contextlib.aclosing(second) as hubs:
        b = await anext(hubs)
        assert b.hub.missing_blobs == set()
        seed = b.data_dir / "seed" / f["id"] / "x.bin"
        async with asyncio.timeout(30):
            while not seed.exists():
                await asyncio.sleep(0.05)
        assert seed.read_bytes() == data
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}/f/{f['id']}") as r:
            assert r.status == 200 and await r.read() == data
