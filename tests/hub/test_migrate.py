"""``swarmhub hub migrate``: an embedded hub's catalog and blobs move to PostgreSQL and S3
and a hub on those serves the same files, tokens and passkeys."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from hubproc import cli
from test_api import live_hub
from test_app import announce

from swarmhub.hub.backends import open_catalog

pytestmark = pytest.mark.slow


async def test_embedded_hub_moves_to_postgresql_and_s3(tmp_path: Path, postgres: Any,
                                                       s3: Any) -> None:
    data = os.urandom(200_000)
    async with contextlib.aclosing(live_hub(tmp_path / "old")) as hubs:
        old = await anext(hubs)
        pub, _ = await old.token("publisher")
        status, f = await old.publish(data, "kept.bin", pub)
        assert status == 201
        async with old.http.post(f"{old.url}/api/collections", headers=old.auth(old.admin),
                                 json={"name": "team", "private": True}) as r:
            assert r.status == 201
        status, secret = await old.publish(b"private bytes", "s.bin", pub, collection="team")
        assert status == 201
        reader, info = await old.token("reader")
        _, revoked_info = await old.token("reader")
        async with old.http.post(f"{old.url}/api/tokens/{revoked_info['id']}/revoke",
                                 headers=old.auth(old.admin)) as r:
            assert r.status == 200
        admin = old.admin
        # The old hub still serves while the copy runs (twice: the second run is a no-op).
        db, store = postgres.new_database(), s3.new_url()
        args = ["hub", "migrate", "--from", f"sqlite:{old.data_dir / 'catalog.sqlite3'}",
                "--to", db, "--from-blobs", str(old.data_dir), "--to-blobs", store]
        first = cli(tmp_path, "migrate-1", *args)
        assert first.returncode == 0, first.describe()
        again = cli(tmp_path, "migrate-2", *args)
        assert again.returncode == 0, again.describe()
        assert "blobs: 0 copied, 2 already there" in (tmp_path / "migrate-2.log").read_text()
        async with old.http.get(f"{old.url}/f/{f['id']}") as r:
            assert r.status == 200 and await r.read() == data
    async with contextlib.aclosing(live_hub(tmp_path / "new", db=db, store=store)) as hubs:
        new = await anext(hubs)
        new.admin = admin  # the old admin token works on the new hub
        async with new.http.get(f"{new.url}/api/tokens", headers=new.auth(admin)) as r:
            assert r.status == 200
        (new.data_dir / "blobs" / f["sha256"][:2] / f["sha256"]).unlink(missing_ok=True)
        async with new.http.get(f"{new.url}/f/{f['id']}") as r:  # from S3
            assert r.status == 200 and await r.read() == data
        ih = bytes.fromhex(secret["info_hash_v1"])
        ok = await announce(new, ih, base=f"{new.url}/announce?passkey={info['passkey']}")
        assert b"failure reason" not in ok  # a passkey handed out by the old hub
        refused = await announce(new, ih,
                                 base=f"{new.url}/announce?passkey={revoked_info['passkey']}")
        assert b"failure reason" in refused  # and its revocation came along
        async with new.http.get(f"{new.url}/api/files/{secret['id']}",
                                headers=new.auth(reader)) as r:
            assert r.status == 200


async def test_a_second_migrate_carries_deletions_and_keeps_what_the_target_published(
    tmp_path: Path, postgres: Any,
) -> None:
    kept, gone, fresh = os.urandom(120_000), os.urandom(130_000), os.urandom(140_000)
    db, blobs = postgres.new_database(), tmp_path / "new-blobs"
    async with contextlib.aclosing(live_hub(tmp_path / "old")) as hubs:
        old = await anext(hubs)
        _, k = await old.publish(kept, "kept.bin", old.admin)
        _, g = await old.publish(gone, "gone.bin", old.admin)
        async with old.http.post(f"{old.url}/api/collections", headers=old.auth(old.admin),
                                 json={"name": "old-team", "private": False}) as r:
            assert r.status == 201
        args = ["hub", "migrate", "--from", f"sqlite:{old.data_dir / 'catalog.sqlite3'}",
                "--to", db, "--from-blobs", str(old.data_dir), "--to-blobs", str(blobs)]
        first = cli(tmp_path, "migrate-1", *args)
        assert first.returncode == 0, first.describe()
        # Between the runs: the target gets a file and a collection of its own, and the
        # source deletes a file and a collection the first run copied.
        async with contextlib.aclosing(live_hub(tmp_path / "new", db=db,
                                                blob_dir=blobs)) as new_hubs:
            new = await anext(new_hubs)
            _, t = await new.publish(fresh, "target.bin", new.admin)
            async with new.http.post(f"{new.url}/api/collections",
                                     headers=new.auth(new.admin),
                                     json={"name": "new-team", "private": False}) as r:
                assert r.status == 201
        for path in (f"/api/files/{g['id']}", "/api/collections/old-team"):
            async with old.http.delete(old.url + path, headers=old.auth(old.admin)) as r:
                assert r.status == 200, await r.text()
        second = cli(tmp_path, "migrate-2", *args)
        assert second.returncode == 0, second.describe()
    log = (tmp_path / "migrate-2.log").read_text()
    assert "since the last run: 1 files, 1 collections (1 blob(s) removed)" in log, log
    target = open_catalog(db, tmp_path / "check")
    try:
        assert target.get_file(g["id"]) is None
        assert target.get_file(k["id"]) is not None and target.get_file(t["id"]) is not None
        assert {c.name for c in target.list_collections()} == {"new-team"}
    finally:
        target.close()

    def stored(sha: str) -> bool:
        return (blobs / "blobs" / sha[:2] / sha).is_file()

    assert not stored(g["sha256"]) and stored(k["sha256"]) and stored(t["sha256"])
    # A third run has nothing left to delete.
    third = cli(tmp_path, "migrate-3", *args)
    assert third.returncode == 0, third.describe()
    assert "since the last run: none" in (tmp_path / "migrate-3.log").read_text()
