"""Catalog: migrations, files, search, collections, tokens and the tracker indexes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from swarmhub.hub.catalog import (
    MIGRATIONS,
    SECRET_FILE,
    Catalog,
    CatalogBase,
    CatalogError,
    ConflictError,
    InvalidError,
    NotFoundError,
    hash_passkey,
    hash_token,
    new_file_id,
    validate_file_name,
)


def add(cat: CatalogBase, name: str, n: int, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "name": name,
        "size": 100 + n,
        "sha256": f"{n:064x}",
        "collection": None,
        "info_hash_v1": n.to_bytes(20, "big"),
        "info_hash_v2": bytes([n + 100]) * 32,
        "info_hash_v1_torrent": bytes([n + 200]) * 20,
        "piece_length": 16384,
        "torrent_hybrid": b"hybrid%d" % n,
        "torrent_v1": b"v1-%d" % n,
        "published_by": None,
    }
    args.update(kw)
    return cat.add_file(**args)


@pytest.fixture(params=["sqlite", "postgresql"])
def cat(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The same tests against the embedded SQLite catalog and a real PostgreSQL 15."""
    c: CatalogBase
    if request.param == "sqlite":
        c = Catalog(tmp_path / "cat.sqlite3")
    else:
        from swarmhub.hub.catalog_pg import PgCatalog

        c = PgCatalog(request.getfixturevalue("postgres").new_database())
    yield c
    c.close()


def _dump(cat: CatalogBase) -> str:
    """Everything the database holds, as text (to look for secrets in it)."""
    if isinstance(cat, Catalog):
        return "\n".join(cat._db.iterdump())
    with cat._tx() as db:
        rows = [*db.all("SELECT * FROM tokens"), *db.all("SELECT * FROM files")]
    return "\n".join(" ".join(x.hex() if isinstance(x, bytes) else str(x) for x in r)
                     for r in rows)


def test_fresh_database_is_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    c = Catalog(path)
    assert c.schema_version() == MIGRATIONS[-1][0] == 3
    c.close()
    c = Catalog(path)  # reopening applies nothing twice
    assert c.schema_version() == 3
    c.close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT version FROM schema_migrations").fetchall()
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    db.close()
    assert rows == [(1,), (2,), (3,)]
    assert {"files", "collections", "tokens", "schema_migrations", "blob_pins"} <= tables
    assert mode == "wal"


def test_file_crud_and_info_hash_index(cat: CatalogBase, tmp_path: Path) -> None:
    rec = add(cat, "report.pdf", 1)
    assert cat.get_file(rec.id) == rec
    assert rec.private is False and rec.size == 101
    assert cat.get_torrent(rec.id, "hybrid") == b"hybrid1"
    assert cat.get_torrent(rec.id, "v1") == b"v1-1"
    assert cat.lookup_info_hash((1).to_bytes(20, "big")) == (rec.id, False)
    assert cat.lookup_info_hash(bytes([101]) * 20) == (rec.id, False)
    removed, unreferenced = cat.delete_file(rec.id)
    assert removed == rec and unreferenced is True
    assert cat.get_file(rec.id) is None
    assert cat.lookup_info_hash((1).to_bytes(20, "big")) is None
    with pytest.raises(NotFoundError):
        cat.delete_file(rec.id)


def test_delete_reports_blob_still_referenced(cat: CatalogBase) -> None:
    a = add(cat, "a.bin", 1)
    add(cat, "b.bin", 2, sha256=a.sha256)
    _, unreferenced = cat.delete_file(a.id)
    assert unreferenced is False
    assert cat.blob_is_referenced(a.sha256)


def test_same_info_hash_twice_is_a_conflict(cat: CatalogBase) -> None:
    add(cat, "a.bin", 1)
    with pytest.raises(ConflictError, match="already published"):
        add(cat, "a.bin", 1)


def test_indexes_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    c = Catalog(path)
    c.add_collection("secret", True)
    rec = add(c, "x", 5, collection="secret")
    _, token = c.add_token("reader")
    c.close()
    c = Catalog(path)
    assert c.lookup_info_hash((5).to_bytes(20, "big")) == (rec.id, True)
    assert c.passkey_is_live(token.passkey)
    c.close()


def test_list_search_and_paging(cat: CatalogBase) -> None:
    cat.add_collection("docs", False)
    cat.add_collection("secret", True)
    add(cat, "Äpfel-Report.pdf", 1, collection="docs")
    add(cat, "notes.txt", 2)
    add(cat, "hidden-report.pdf", 3, collection="secret")
    files, total = cat.list_files(query="REPORT")
    assert total == 1 and [f.name for f in files] == ["Äpfel-Report.pdf"]
    files, total = cat.list_files(query="äpfel")  # Unicode case-insensitive
    assert total == 1
    files, total = cat.list_files(query="report", include_private=True)
    assert total == 2
    files, total = cat.list_files(collection="docs")
    assert [f.collection for f in files] == ["docs"]
    files, total = cat.list_files(include_private=True, limit=2, offset=0)
    assert total == 3 and len(files) == 2
    rest, _ = cat.list_files(include_private=True, limit=2, offset=2)
    assert len(rest) == 1 and rest[0].id not in {f.id for f in files}
    files, _ = cat.list_files(query="100%_")  # LIKE wildcards are literal here
    assert files == []


def test_unknown_collection_is_refused(cat: CatalogBase) -> None:
    with pytest.raises(NotFoundError, match="POST /api/collections"):
        add(cat, "a", 1, collection="nope")


def test_collections_crud(cat: CatalogBase) -> None:
    c = cat.add_collection("team-1", True)
    assert c.private and c.files == 0
    with pytest.raises(ConflictError):
        cat.add_collection("team-1", False)
    with pytest.raises(InvalidError):
        cat.add_collection("../x", False)
    add(cat, "f", 1, collection="team-1")
    got = cat.get_collection("team-1")
    assert got is not None and got.files == 1
    with pytest.raises(ConflictError, match="still holds 1"):
        cat.delete_collection("team-1")
    assert [x.name for x in cat.list_collections()] == ["team-1"]
    with pytest.raises(NotFoundError):
        cat.delete_collection("other")


def test_tokens_store_only_hashes_and_revoke_at_once(cat: CatalogBase, tmp_path: Path) -> None:
    secret, rec = cat.add_token("publisher", "ci")
    assert len(secret) >= 43
    assert cat.token_for_secret(secret) == rec
    assert cat.token_for_secret(secret + "x") is None
    dump = _dump(cat)  # the secret is nowhere in the database
    assert secret not in dump
    assert hash_token(secret).hex().upper() in dump.upper()
    assert cat.passkey_is_live(rec.passkey)
    revoked = cat.revoke_token(rec.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert not cat.passkey_is_live(rec.passkey)
    found = cat.token_for_secret(secret)
    assert found is not None and not found.active
    with pytest.raises(InvalidError):
        cat.add_token("root")
    with pytest.raises(NotFoundError):
        cat.revoke_token("nope")
    assert [t.id for t in cat.list_tokens()] == [rec.id]


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "a\\b", "x\x00y", "CON", "con.txt", "..", "", "a."]
)
def test_unsafe_names_are_refused(cat: CatalogBase, name: str) -> None:
    with pytest.raises(InvalidError):
        validate_file_name(name)
    with pytest.raises(InvalidError):
        add(cat, name, 9)
    assert cat.list_files(include_private=True) == ([], 0)


def test_stats(cat: CatalogBase) -> None:
    a = add(cat, "a", 1)
    add(cat, "b", 2, sha256=a.sha256, size=a.size)
    cat.add_token("admin")
    s = cat.stats()
    assert s == {
        "files": 2,
        "file_bytes": 2 * a.size,
        "blobs": 1,
        "blob_bytes": a.size,
        "collections": 0,
        "active_tokens": 1,
    }


def _disk_bytes(path: Path) -> bytes:
    """Everything SQLite keeps on disk for ``path`` (database, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_passkeys_are_derived_and_only_their_digest_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    c = Catalog(path)
    _, rec = c.add_token("reader", "dave")
    assert len(rec.passkey) == 32 and rec.passkey == c.passkey_for(rec.id)
    assert c.passkey_owner(rec.passkey) == rec.id
    dump = "\n".join(c._db.iterdump())
    assert rec.passkey not in dump and hash_passkey(rec.passkey) in dump
    c.close()
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert rec.passkey.encode() not in _disk_bytes(path)
    c = Catalog(path)  # same secret file: same passkeys, still live
    again = c.get_token(rec.id)
    assert again is not None and again.passkey == rec.passkey
    assert c.passkey_is_live(rec.passkey)
    c.close()
    other = Catalog(tmp_path / "other" / "c.sqlite3")  # another hub derives other passkeys
    assert other.passkey_for(rec.id) != rec.passkey
    other.close()


def test_a_replaced_secret_rederives_every_passkey(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    c = Catalog(path)
    _, rec = c.add_token("reader")
    c.close()
    (tmp_path / SECRET_FILE).unlink()
    c = Catalog(path)
    new = c.get_token(rec.id)
    assert new is not None and new.passkey != rec.passkey
    assert not c.passkey_is_live(rec.passkey) and c.passkey_is_live(new.passkey)
    c.close()


def test_damaged_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(CatalogError, match="delete it"):
        Catalog(tmp_path / "c.sqlite3")


def test_version_1_catalog_loses_its_plaintext_passkeys(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    old_passkey = "5e1f" * 8
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied REAL)")
    for statement in MIGRATIONS[0][1].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    db.execute(
        "INSERT INTO tokens (id, token_sha256, role, label, passkey, created)"
        " VALUES ('tkold', ?, 'reader', 'old', ?, 1.0)",
        (hash_token("s3cret"), old_passkey),
    )
    db.execute(
        "INSERT INTO files (id, name, size, sha256, created, piece_length, torrent_hybrid,"
        " torrent_v1, published_by) VALUES ('f1', 'a.bin', 1, 'ab', 1.0, 16384, x'00', x'00',"
        " 'tkold')"
    )
    db.close()
    assert old_passkey.encode() in _disk_bytes(path)
    c = Catalog(path)
    assert c.schema_version() == 3
    rec = c.token_for_secret("s3cret")
    assert rec is not None and rec.id == "tkold" and rec.passkey != old_passkey
    assert c.passkey_owner(rec.passkey) == "tkold"
    assert not c.passkey_is_live(old_passkey)  # old .torrent files must be fetched again
    f = c.get_file("f1")
    assert f is not None and f.published_by == "tkold"
    c.close()
    assert old_passkey.encode() not in _disk_bytes(path)


# -- PostgreSQL: one catalog shared by several hub processes -------------------------------


def _until(check: Any, timeout: float = 30.0) -> float:
    """Poll ``check()`` until true; returns the seconds it took. The deadline only guards
    against a hang (a change that never arrives): how soon is checked on counts instead."""
    import time

    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - start


def test_postgresql_migrates_once_and_shares_one_secret(postgres: Any) -> None:
    from swarmhub.hub.catalog_pg import PgCatalog

    url = postgres.new_database()
    a, b = PgCatalog(url), PgCatalog(url)
    try:
        assert a.schema_version() == b.schema_version() == MIGRATIONS[-1][0]
        with a._tx() as db:
            versions = [int(r[0]) for r in db.all("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in MIGRATIONS]
        _, tok = a.add_token("reader")
        assert b.passkey_for(tok.id) == tok.passkey  # same passkeys from every process
    finally:
        a.close()
        b.close()


def test_postgresql_writes_reach_the_other_process_by_notification(postgres: Any) -> None:
    """Each write reaches the other process's indexes through a NOTIFY-driven reload (the
    watcher never reloads on a timer, so without the notification nothing would change);
    the seconds it took are printed, not asserted."""
    from swarmhub.hub.catalog_pg import PgCatalog

    url = postgres.new_database()
    a, b = PgCatalog(url), PgCatalog(url)
    try:
        r0 = b.reloads
        rec = add(a, "x.bin", 7)
        took = _until(lambda: b.lookup_info_hash((7).to_bytes(20, "big")) == (rec.id, False))
        _until(lambda: b.reloads > r0)
        _, tok = a.add_token("reader")
        _until(lambda: b.passkey_is_live(tok.passkey))
        r0 = a.reloads
        b.revoke_token(tok.id)
        took = max(took, _until(lambda: not a.passkey_is_live(tok.passkey)))
        _until(lambda: a.reloads > r0)
        r0 = a.reloads
        b.delete_file(rec.id)
        took = max(took, _until(lambda: a.lookup_info_hash((7).to_bytes(20, "big")) is None))
        _until(lambda: a.reloads > r0)
        print(f"\nslowest write to reach the other process: {took * 1000:.0f} ms")
        with pytest.raises(ConflictError):  # the index, not only the table, is shared
            a.add_collection("c", False) and b.add_collection("c", False)
    finally:
        a.close()
        b.close()


def test_sqlite_shared_by_processes_sees_their_writes_at_the_next_poll(tmp_path: Path) -> None:
    """``hub --workers``: each worker's indexes follow the others' writes, at the first poll
    that begins after the write (counted in polls, not in seconds)."""
    path = tmp_path / "c.sqlite3"
    a, b = Catalog(path, poll=0.05), Catalog(path, poll=0.05)
    try:
        _, tok = a.add_token("reader")
        p0 = b.polls  # read after the commit: poll p0 + 1 begins after it
        _until(lambda: b.passkey_is_live(tok.passkey) and b.reloaded_at_poll >= p0)
        assert b.reloaded_at_poll <= p0 + 1
        a.revoke_token(tok.id)
        p0 = b.polls
        _until(lambda: not b.passkey_is_live(tok.passkey) and b.reloaded_at_poll >= p0)
        assert b.reloaded_at_poll <= p0 + 1
        rec = add(b, "y.bin", 8)
        p0 = a.polls
        _until(lambda: a.lookup_info_hash((8).to_bytes(20, "big")) == (rec.id, False)
               and a.reloaded_at_poll >= p0)
        assert a.reloaded_at_poll <= p0 + 1
    finally:
        a.close()
        b.close()


def test_the_same_torrent_published_through_two_processes_is_a_conflict(postgres: Any) -> None:
    """B's index may not have heard of A's publish yet: the table decides."""
    from swarmhub.hub.catalog_pg import PgCatalog

    url = postgres.new_database()
    a, b = PgCatalog(url), PgCatalog(url)
    try:
        b._hashes.clear()  # as if A's notification had not arrived yet
        add(a, "a.bin", 3)
        b._hashes.clear()
        with pytest.raises(ConflictError, match="already published"):
            add(b, "a.bin", 3)
    finally:
        a.close()
        b.close()


def test_postgresql_reload_keeps_what_an_open_write_of_ours_added(postgres: Any) -> None:
    """A reload that reads the rows while one of this process's index-changing writes is
    open (its row not yet committed, its entry already in the indexes) must not replace
    the indexes: it dropped a just-made token's passkey until the next notification (seen
    once under load: ``passkey_is_live`` False right after ``add_token``)."""
    from swarmhub.hub.catalog_pg import PgCatalog

    a = PgCatalog(postgres.new_database())
    try:
        _, before = a.add_token("reader")
        with a._tx() as db:
            a._changed(db)
            a._passkeys["pending"] = "t-open"  # as add_token does before its commit
            assert a._call(a._reload()) is False
            assert a._passkeys["pending"] == "t-open"
        # nothing open: the database's indexes apply (the count of reloads is not checked:
        # add_token's own notification may reload in the background meanwhile)
        assert a._call(a._reload()) is True
        assert "pending" not in a._passkeys and a.passkey_is_live(before.passkey)
    finally:
        a.close()


def test_a_file_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """``swarmhub admin files delete ID`` must not read an id as an option (one random id
    in 64 began with ``-``: a usage error, seen once in CI)."""
    import secrets

    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: "-AbCdEfGhIjK")
    assert new_file_id() == "_AbCdEfGhIjK"
    monkeypatch.undo()
    assert all(not new_file_id().startswith("-") for _ in range(2000))
