"""Blob lifetime across hubs sharing one store: a delete on one hub never removes the blob
another hub is publishing the same bytes onto (content-addressed dedup), and a blob
nothing references or pins any more is removed, wherever the last delete happens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_api import Live, live_hub

from swarmhub.hub import api
from swarmhub.hub.catalog import Catalog


@pytest.fixture(params=["sqlite+folder", pytest.param("postgresql+s3", marks=pytest.mark.slow)])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """HubConfig fields two hubs share: a catalog and a blob store."""
    if request.param == "sqlite+folder":
        return {"db": f"sqlite:{tmp_path / 'catalog.sqlite3'}", "blob_dir": tmp_path / "shared"}
    return {"db": request.getfixturevalue("postgres").new_database(),
            "store": request.getfixturevalue("s3").new_url()}


def blob_exists(request: pytest.FixtureRequest, store: dict[str, Any], sha: str) -> bool:
    """Whether the shared store (not a hub's cache) holds the blob."""
    if "blob_dir" in store:
        return bool((store["blob_dir"] / "blobs" / sha[:2] / sha).is_file())
    s3 = request.getfixturevalue("s3")
    return bool(s3.object_path(store["store"], f"blobs/{sha[:2]}/{sha}").is_file())


@contextlib.asynccontextmanager
async def two_hubs(tmp_path: Path, store: dict[str, Any]) -> AsyncIterator[tuple[Live, Live]]:
    async with contextlib.AsyncExitStack() as stack:
        hubs = []
        for name in ("a", "b"):
            gen = live_hub(tmp_path / name, max_upload_size=1 << 20, **store)
            hubs.append(await anext(gen))
            stack.push_async_callback(gen.aclose)
        yield hubs[0], hubs[1]


async def download(hub: Live, file_id: str) -> tuple[int, bytes]:
    async with hub.http.get(f"{hub.url}/f/{file_id}") as r:
        return r.status, await r.read()


async def test_a_delete_on_one_hub_keeps_the_blob_another_hub_is_publishing_onto(
    tmp_path: Path, shared_store: dict[str, Any], request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # B's publish is held after it found the blob already stored (dedup) and made its
    # torrents, before its catalog row exists: the window in which A's delete of the only
    # other file with these bytes used to remove the blob under B's new file.
    reached, release = asyncio.Event(), asyncio.Event()
    real_pause: Callable[[str], Awaitable[None]] = api.pause_point

    async def hold(point: str) -> None:
        if point == "torrent" and not release.is_set():
            reached.set()
            await release.wait()
        await real_pause(point)

    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    async with two_hubs(tmp_path, shared_store) as (a, b):
        status, first = await a.publish(data, "first.bin", a.admin)
        assert status == 201, first
        monkeypatch.setattr(api, "pause_point", hold)
        publishing = asyncio.create_task(b.publish(data, "second.bin", b.admin))
        await asyncio.wait_for(reached.wait(), 60)
        async with a.http.delete(f"{a.url}/api/files/{first['id']}",
                                 headers=a.auth(a.admin)) as r:
            assert r.status == 200, await r.text()
        assert blob_exists(request, shared_store, sha), "deleted while B relies on it"
        release.set()
        status, second = await asyncio.wait_for(publishing, 60)
        assert status == 201, second
        for hub in (a, b):
            assert await download(hub, second["id"]) == (200, data)
        # The last reference gone (deleted through the other hub): the blob goes too.
        async with b.http.delete(f"{b.url}/api/files/{second['id']}",
                                 headers=b.auth(b.admin)) as r:
            assert r.status == 200, await r.text()
        assert not blob_exists(request, shared_store, sha)


async def test_a_publish_that_pins_after_the_delete_stores_the_bytes_again(
    tmp_path: Path, shared_store: dict[str, Any], request: pytest.FixtureRequest,
) -> None:
    """The other order: the blob is gone before B looks for it, so B uploads it again."""
    data = os.urandom(150_000)
    sha = hashlib.sha256(data).hexdigest()
    async with two_hubs(tmp_path, shared_store) as (a, b):
        status, first = await a.publish(data, "first.bin", a.admin)
        assert status == 201
        async with a.http.delete(f"{a.url}/api/files/{first['id']}",
                                 headers=a.auth(a.admin)) as r:
            assert r.status == 200
        assert not blob_exists(request, shared_store, sha)
        status, second = await b.publish(data, "second.bin", b.admin)
        assert status == 201
        assert blob_exists(request, shared_store, sha)
        assert await download(a, second["id"]) == (200, data)


def test_collect_blob_spares_referenced_and_pinned_blobs_until_the_pin_goes_or_expires(
    tmp_path: Path,
) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    deleted: list[str] = []
    sha = "ab" * 32
    try:
        catalog.pin_blob(sha, "hub1-1")
        catalog.pin_blob(sha, "hub2-1")
        assert not catalog.collect_blob(sha, deleted.append)
        catalog.unpin_blob(sha, "hub1-1")
        assert not catalog.collect_blob(sha, deleted.append)  # hub2 still pins it
        catalog.unpin_blob(sha, "hub2-1")
        assert catalog.collect_blob(sha, deleted.append) and deleted == [sha]
        # A holder that died mid-publish: its pin stops counting once it expires.
        catalog.pin_blob(sha, "dead-1", ttl=-1.0)
        assert catalog.collect_blob(sha, deleted.append) and deleted == [sha, sha]
        with catalog._tx() as db:
            assert db.one("SELECT COUNT(*) FROM blob_pins") == (0,)
        assert catalog.schema_version() >= 3
    finally:
        catalog.close()
