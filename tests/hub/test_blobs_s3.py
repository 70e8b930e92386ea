"""Blobs in a real S3 server (rclone): uploads land in S3 before the catalog row, a hub
without a local copy streams ranges from S3 (or redirects to a presigned URL), and the
seeder reads pieces from S3 through a bounded LRU cache."""

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
from test_access import swarmhub_get
from test_api import Live, live_hub
from test_app import fetch

from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import StorageError
from swarmhub.hub import blobs_s3
from swarmhub.hub.app import Seeder
from swarmhub.hub.blobs_s3 import PieceCache, S3BlobStore, parse_s3_url


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


def test_the_piece_cache_keeps_the_most_recently_used_ranges_within_its_bytes() -> None:
    cache = PieceCache(300)
    for n in range(3):
        cache.put(("a", n * 100, 100), bytes([n]) * 100)
    assert cache.get(("a", 0, 100)) == bytes(100)  # used again: now the most recent
    cache.put(("b", 0, 100), b"b" * 100)  # over capacity: the least recent goes
    assert cache.ranges() == [("a", 200, 100), ("a", 0, 100), ("b", 0, 100)]
    assert cache.size == 300 and cache.get(("a", 100, 100)) is None
    cache.put(("big", 0, 301), b"x" * 301)  # larger than the whole cache: not kept
    assert cache.size == 300 and cache.get(("big", 0, 301)) is None
    cache.put(("b", 0, 100), b"c" * 100)  # replaced, not counted twice
    assert cache.size == 300 and cache.get(("b", 0, 100)) == b"c" * 100


async def test_read_range_serves_the_local_copy_then_s3_through_the_bounded_cache(
    tmp_path: Path, s3: Any,
) -> None:
    url = s3.new_url()
    st = S3BlobStore(url, tmp_path / "cache", piece_cache=3 * 1000)
    try:
        data = os.urandom(10_000)
        info = await asyncio.to_thread(st.commit, await st.stage(_stream(data), 1 << 20))
        sha = info.sha256
        assert await asyncio.to_thread(st.read_range, sha, 500, 1000) == data[500:1500]
        assert st.pieces.misses == 0  # the local copy answered: S3 was not asked
        info.path.unlink()  # another hub's situation: only S3 holds the blob
        for offset in range(0, 10_000, 1000):  # ten pieces through a cache of three
            got = await asyncio.to_thread(st.read_range, sha, offset, 1000)
            assert got == data[offset:offset + 1000]
            assert st.pieces.size <= 3000
        assert st.pieces.misses == 10 and st.pieces.hits == 0
        assert [k[1] for k in st.pieces.ranges()] == [7000, 8000, 9000]
        assert await asyncio.to_thread(st.read_range, sha, 8000, 1000) == data[8000:9000]
        assert st.pieces.hits == 1 and st.pieces.misses == 10  # no second GET
        assert not info.path.exists() and not list(st.tmp_dir.iterdir())
    finally:
        st.close()


async def test_a_hub_without_local_copies_seeds_from_s3_within_its_piece_cache(
    tmp_path: Path, s3: Any, postgres: Any,
) -> None:
    """A second hub (own data folder, same catalog and store) has no local copies: its
    start-up check asks S3, and its seeder serves a BitTorrent download piece by piece
    from S3 through a cache far smaller than the file, keeping no copy of the blob."""
    shared = {"db": postgres.new_database(), "store": s3.new_url()}
    data = os.urandom(3 << 20)
    async with contextlib.aclosing(live_hub(tmp_path / "a", **shared)) as hubs:
        a = await anext(hubs)
        status, f = await a.publish(data, "x.bin", a.admin)
        assert status == 201
    budget = 256 << 10
    second = live_hub(tmp_path / "b", peer_listen=("127.0.0.1", 0), s3_piece_cache=budget,
                      **shared)
    async with contextlib.aclosing(second) as hubs:
        b = await anext(hubs)
        assert b.hub.missing_blobs == set()
        seeder = b.hub.seeder
        assert isinstance(seeder, Seeder)
        ih = bytes.fromhex(f["info_hash_v1"])
        async with asyncio.timeout(60):
            while seeder.session is None or seeder.session.torrent_for_hash(ih) is None:
                await asyncio.sleep(0.05)
        status, raw, _ = await fetch(b, f"/t/{f['id']}.torrent")
        assert status == 200
        outer = bdecode(raw)
        del outer[b"url-list"]  # the seeder is the only source
        tfile = tmp_path / "x.torrent"
        tfile.write_bytes(bencode(outer))
        store = b.hub.blobs
        assert isinstance(store, S3BlobStore)
        with swarmhub_get(tfile, tmp_path / "dl", tmp_path, "get-from-s3", "--peer",
                          f"127.0.0.1:{seeder.port}", "--timeout", "120") as g:
            async with asyncio.timeout(150):
                while g.poll() is None:
                    assert store.pieces.size <= budget
                    await asyncio.sleep(0.05)
            assert g.returncode == 0, g.describe()
        assert (tmp_path / "dl" / "x.bin").read_bytes() == data
        assert store.pieces.misses * f["piece_length"] >= len(data)  # every piece from S3
        assert store.pieces.size <= budget
        cached = [p for p in (b.data_dir / "blobs").rglob("*") if p.is_file()]
        assert cached == [] and not (b.data_dir / "seed" / f["id"]).exists()
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}/f/{f['id']}") as r:
            assert r.status == 200 and await r.read() == data
