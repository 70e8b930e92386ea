"""Start-up storage check: leftovers go, published files stay, lost blobs are restored or
reported, and the data folder is private (also for installs made before this rule)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from test_api import live_hub

from swarmhub.hub.catalog import Catalog
from swarmhub.hub.reconcile import CATALOG_NAME, prepare_data_dir, reconcile


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def publish_one(tmp_path: Path, data: bytes, name: str = "kept.bin") -> dict[str, Any]:
    """Publish one file on a hub that then stops; returns the file's JSON."""
    async with contextlib.aclosing(live_hub(tmp_path)) as hubs:
        async for live in hubs:
            status, body = await live.publish(data, name, live.admin)
            assert status == 201, body
            return dict(body)
    raise AssertionError("live_hub yielded nothing")


def run_reconcile(data: Path) -> Any:
    catalog = Catalog(data / CATALOG_NAME)
    try:
        return reconcile(data, catalog)
    finally:
        catalog.close()


async def test_leftovers_are_removed_and_published_files_kept(tmp_path: Path) -> None:
    f = await publish_one(tmp_path, os.urandom(40_000))
    data = tmp_path / "hub"
    blob = data / "blobs" / f["sha256"][:2] / f["sha256"]
    seed_file = data / "seed" / f["id"] / "kept.bin"
    orphan = "ab" + "0" * 62
    planted = [
        data / "tmp" / "upload-0123",
        data / "blobs" / "ab" / orphan,
        data / "blobs" / f["sha256"][:2] / "junk",
        data / "blobs" / "not-a-prefix",
        data / "seed" / "GoneFile123" / "old.bin",
        data / "seed" / f["id"] / "stray.part",
        data / "seed-state" / ".abc.resume.xyz.tmp",
        data / "seed-state" / ("12" * 20 + "-" + "0" * 12 + ".resume"),
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    kept_resume = data / "seed-state" / (f["info_hash_v1"] + "-" + "1" * 12 + ".resume")
    kept_resume.write_bytes(b"d")
    report = run_reconcile(data)
    assert [p for p in planted if p.exists()] == []
    assert blob.read_bytes() and seed_file.exists() and kept_resume.exists()
    assert (report.temp_files, report.orphan_blobs, report.seed_entries, report.resume_files) == (
        1, 3, 2, 2
    )
    assert report.orphan_bytes == 30 and report.removed == 8 and report.missing == []
    assert "removed 8 leftover(s)" in report.summary()
    assert not (data / "blobs" / "ab").exists()  # emptied prefix folders go too
    # A second pass finds nothing.
    assert run_reconcile(data).removed == 0


async def test_lost_blob_is_restored_from_its_seed_link(tmp_path: Path) -> None:
    content = os.urandom(30_000)
    f = await publish_one(tmp_path, content)
    data = tmp_path / "hub"
    blob = data / "blobs" / f["sha256"][:2] / f["sha256"]
    blob.unlink()
    report = run_reconcile(data)
    assert report.restored_blobs == 1 and report.missing == []
    assert blob.read_bytes() == content and mode(blob) == 0o400


async def test_lost_blob_without_seed_copy_is_kept_reported_and_deletable(tmp_path: Path) -> None:
    f = await publish_one(tmp_path, os.urandom(30_000))
    data = tmp_path / "hub"
    (data / "blobs" / f["sha256"][:2] / f["sha256"]).unlink()
    seed_file = data / "seed" / f["id"] / "kept.bin"
    seed_file.chmod(0o600)
    seed_file.write_bytes(b"other bytes")  # a link that no longer holds the file
    async for live in live_hub(tmp_path):
        assert live.hub.missing_blobs == {f["id"]}
        async with live.http.get(f"{live.url}/api/stats", headers=live.auth(live.admin)) as r:
            stats = await r.json()
        assert stats["files"] == 1 and stats["missing_blobs"] == 1, stats
        async with live.http.get(f"{live.url}/f/{f['id']}/kept.bin") as r:
            assert r.status == 404
        async with live.http.delete(
            f"{live.url}/api/files/{f['id']}", headers=live.auth(live.admin)
        ) as r:
            assert r.status == 200
        async with live.http.get(f"{live.url}/api/stats", headers=live.auth(live.admin)) as r:
            stats = await r.json()
        assert stats["files"] == 0 and stats["missing_blobs"] == 0, stats


async def test_new_data_folder_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a library user's usual umask: the hub must not rely on it
    try:
        f = await publish_one(tmp_path, os.urandom(20_000))
    finally:
        os.umask(old)
    data = tmp_path / "hub"
    assert mode(data) == 0o700
    catalog_files = [p for p in data.iterdir() if p.name.startswith(CATALOG_NAME)]
    assert len(catalog_files) >= 1
    assert {p.name: mode(p) for p in catalog_files} == {p.name: 0o600 for p in catalog_files}
    blob = data / "blobs" / f["sha256"][:2] / f["sha256"]
    assert mode(blob) == 0o400  # the seed link is the same inode
    assert (data / "seed" / f["id"] / "kept.bin").stat().st_ino == blob.stat().st_ino


async def test_existing_install_is_made_private_at_start(tmp_path: Path) -> None:
    f = await publish_one(tmp_path, os.urandom(20_000))
    data = tmp_path / "hub"
    blob = data / "blobs" / f["sha256"][:2] / f["sha256"]
    secret = data / "hub-secret"  # e.g. a secret file another part of the hub keeps
    secret.write_bytes(b"s")
    data.chmod(0o755)
    for p in (secret, *(q for q in data.iterdir() if q.name.startswith(CATALOG_NAME))):
        p.chmod(0o644)
    blob.chmod(0o444)
    report = run_reconcile(data)
    assert report.permissions_fixed >= 4
    assert mode(data) == 0o700 and mode(secret) == 0o600 and mode(blob) == 0o400
    assert mode(data / CATALOG_NAME) == 0o600
    assert prepare_data_dir(data) == 0  # nothing left to fix


def test_a_shared_blob_folder_keeps_young_orphans_and_referenced_blobs(tmp_path: Path) -> None:
    """Another hub may have renamed a blob into the shared folder without its row yet."""
    from swarmhub.hub.reconcile import SHARED_BLOB_GRACE

    data, shared = tmp_path / "hub", tmp_path / "shared"
    young, old, listed = ("ab" + c * 62 for c in "123")
    for name in (young, old, listed):
        path = shared / "blobs" / "ab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    past = os.stat(shared / "blobs" / "ab" / young).st_mtime - SHARED_BLOB_GRACE - 60
    for name in (old, listed):
        os.utime(shared / "blobs" / "ab" / name, (past, past))
    prepare_data_dir(data)
    catalog = Catalog(data / CATALOG_NAME)
    try:
        catalog.add_file(name="l.bin", size=10, sha256=listed, collection=None,
                         info_hash_v1=b"\x01" * 20, info_hash_v2=None, piece_length=16384,
                         torrent_hybrid=b"t", torrent_v1=b"t", published_by=None)
        report = reconcile(data, catalog, blob_root=shared)
    finally:
        catalog.close()
    left = sorted(p.name for p in (shared / "blobs" / "ab").iterdir())
    assert left == sorted([young, listed])
    assert report.orphan_blobs == 1
