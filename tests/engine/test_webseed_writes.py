"""A web seed's runs: hashing goes on while a run's write waits for the disk.

Real loopback HTTP (the hub's static origin app) and a real session; the disk is made
slow by holding the first write until the test has seen what it looks for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import types
from pathlib import Path

import pytest

from conftest import until
from swarmhub.engine.session import Session
from swarmhub.engine.status import TorrentState
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage.files import TorrentStorage
from swarmhub.storage.verify import PieceVerifier

PIECE = 64 * 1024
RUN_PIECES = 16  # webseed_driver._RUN_BYTES (1 MiB) of 64 KiB pieces


@pytest.mark.parametrize("held_run", [1, 0], ids=["second-batch", "first-batch"])
async def test_a_held_write_stops_neither_the_stream_nor_the_hashing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_run: int) -> None:
    """With one hashing thread, a run's write is held (a device that has not answered
    yet), and the later runs are still fetched and checked meanwhile; once the write goes
    through the download completes with every byte right, each piece fetched once.

    ``second-batch``: the first run of the second batch (the first batch, 1 MiB until the
    web seed's rate is known, is one run): the rest of its batch streams on.
    ``first-batch``: that one run: the next batch is asked for at its last byte, not once
    it is written (in turn, every batch waited for hash thread -> disk thread -> event
    loop before its request went out)."""
    src = tmp_path / "www" / "payload"
    src.mkdir(parents=True)
    data = random.Random(5).randbytes(6 << 20)
    (src / "file0.bin").write_bytes(data)
    from test_transfer import serve_folder

    runner, base = await serve_folder(tmp_path / "www")
    held, release = threading.Event(), threading.Event()
    checked: list[int] = []
    real_write, real_check = TorrentStorage.write, PieceVerifier.check

    def slow_write(self: TorrentStorage, offset: int, buf: object) -> None:
        if offset == held_run * RUN_PIECES * PIECE and not held.is_set():
            held.set()
            release.wait(60)  # hang guard: the test releases it
        real_write(self, offset, buf)  # type: ignore[arg-type]

    def noting_check(self: PieceVerifier, index: int, view: object, v1: bool = False) -> bool:
        checked.append(index)
        return real_check(self, index, view, v1)  # type: ignore[arg-type]

    monkeypatch.setattr(TorrentStorage, "write", slow_write)
    monkeypatch.setattr(PieceVerifier, "check", noting_check)
    try:
        meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID,
                              piece_length=PIECE, url_list=[base + "payload/file0.bin"])
        settings = Settings().replace(web_seed_grace=0.0, hash_threads=1, disk_threads=2)
        async with Session(settings, state_dir=tmp_path / "s") as leecher:
            t = await leecher.add(meta, tmp_path / "dl")
            try:
                await until(held.is_set, "the held write")
                later = (held_run + 1) * RUN_PIECES
                await until(lambda: any(i >= later for i in checked),
                            "a later run hashed while the write waits", timeout=30)
                assert not t.complete.is_set() and not t.have[held_run * RUN_PIECES]
            finally:
                release.set()
            await asyncio.wait_for(t.complete.wait(), 60)
            assert t.error is None
            assert t.webseed_bytes == meta.data_length
    finally:
        release.set()
        await runner.cleanup()  # type: ignore[attr-defined]
    assert (tmp_path / "dl" / meta.name).read_bytes() == data


@pytest.mark.parametrize("started", [False, True], ids=["not-started", "hashed"])
def test_a_run_dropped_by_a_closing_pool_does_not_leave_its_waiter_hanging(
        started: bool) -> None:
    """The session shuts its pools down with ``cancel_futures``: a run's hashing (or, once
    hashed, its write) still queued is dropped, and the run's waiter hears of it."""
    import concurrent.futures

    from swarmhub.engine.pieces import _dropped

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    busy = threading.Event()
    pool.submit(busy.wait, 60)  # the only thread is taken: the next item stays queued
    done: concurrent.futures.Future[list[bool]] = concurrent.futures.Future()
    if started:  # hashed already: the hash thread marked it running, the write is queued
        assert done.set_running_or_notify_cancel()
    work = pool.submit(lambda: None)
    work.add_done_callback(lambda w: _dropped(done, w))
    pool.shutdown(wait=False, cancel_futures=True)
    busy.set()
    assert work.cancelled()
    if started:
        assert isinstance(done.exception(timeout=0), concurrent.futures.CancelledError)
    else:
        assert done.cancelled()


@pytest.mark.parametrize("broken", [None, "data", "sha1"],
                         ids=["good", "bad-data", "inconsistent-torrent"])
async def test_a_hybrid_run_is_checked_by_v2_and_an_inconsistent_torrent_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str | None) -> None:
    """A hybrid torrent's web-seed runs are checked by one hash (v2), SHA-1 only on the
    sample (PieceVerifier); a piece whose data is wrong is not written and counts as a
    failure while the rest of its run is kept; a torrent whose SHA-1 of a sampled piece
    disagrees with its v2 hash stops with an error that says so, the piece not written."""
    import swarmhub.storage.verify as verify

    src = tmp_path / "www" / "payload"
    src.mkdir(parents=True)
    data = random.Random(7).randbytes(2 << 20)
    (src / "file0.bin").write_bytes(data)
    from test_transfer import serve_folder

    runner, base = await serve_folder(tmp_path / "www")
    sha1_calls: list[int] = []
    real_sha1 = verify.hashlib.sha1

    def counting(view: bytes | memoryview = b"") -> object:  # one per piece SHA-1'd
        sha1_calls.append(len(view))
        return real_sha1(view)

    monkeypatch.setattr(verify, "hashlib", types.SimpleNamespace(sha1=counting))
    bad = 3  # outside the SHA-1 sample
    try:
        meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID,
                              piece_length=PIECE, url_list=[base + "payload/file0.bin"])
        if broken == "data":  # the web seed serves one wrong byte in piece ``bad``
            wrong = bytearray(data)
            wrong[bad * PIECE + 5] ^= 1
            (src / "file0.bin").write_bytes(wrong)
        elif broken == "sha1":  # the torrent's SHA-1 of piece 0 does not match its v2
            v1 = meta.pieces_v1
            assert v1 is not None
            meta = dataclasses.replace(meta, pieces_v1=bytes(20) + v1[20:])
        settings = Settings().replace(web_seed_grace=0.0, hash_threads=2)
        async with Session(settings, state_dir=tmp_path / "s") as leecher:
            t = await leecher.add(meta, tmp_path / "dl")
            on_disk = tmp_path / "dl" / meta.name
            if broken is None:
                await asyncio.wait_for(t.complete.wait(), 60)
                assert t.error is None
                assert on_disk.read_bytes() == data
                due = [i for i in range(meta.num_pieces) if t.pieces.verifier.v1_due(i)]
                assert due == [0, 16, 31]
                assert len(sha1_calls) == len(due)  # one hash for the others
            elif broken == "data":
                await until(lambda: t.swarm.hash_failures >= 1, "the bad piece's check")
                have = t.swarm.have
                assert not have[bad]
                assert all(have[i] for i in range(RUN_PIECES) if i != bad)
                assert not any(on_disk.read_bytes()[bad * PIECE:(bad + 1) * PIECE])
                assert t.error is None
            else:
                await asyncio.wait_for(t.complete.wait(), 60)
                assert t.state is TorrentState.ERROR
                assert t.error is not None and "inconsistent torrent: piece 0" in t.error
                assert not t.swarm.have[0]
                assert not any(on_disk.read_bytes()[:PIECE])
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "another-leecher"])
async def test_swarm_counts_given_before_the_add_start_the_web_seed_without_the_tracker(
        tmp_path: Path, alone: bool) -> None:
    """A hub's file info counts the swarm (Session.expect_swarm): alone, the web seed
    fetches everything while the tracker has not answered (it never does here); with
    another leecher counted, it waits for the tracker or the grace as before."""
    src = tmp_path / "www" / "payload"
    src.mkdir(parents=True)
    data = random.Random(9).randbytes(1 << 20)
    (src / "file0.bin").write_bytes(data)
    from test_transfer import serve_folder

    runner, base = await serve_folder(tmp_path / "www")
    asked = asyncio.Event()
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.set()
        await release.wait()  # an announce that is never answered
        writer.close()

    tracker = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tracker.sockets[0].getsockname()[1]
    try:
        meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID,
                              piece_length=PIECE, url_list=[base + "payload/file0.bin"],
                              trackers=[[f"http://127.0.0.1:{port}/announce"]])
        settings = Settings().replace(web_seed_grace=600.0)
        async with Session(settings, state_dir=tmp_path / "s") as leecher:
            leecher.expect_swarm(meta.info_hash, 1, 0 if alone else 1)
            t = await leecher.add(meta, tmp_path / "dl")
            if alone:
                await asyncio.wait_for(t.complete.wait(), 60)
                assert t.error is None and t.webseed_bytes >= meta.data_length
                assert (tmp_path / "dl" / meta.name).read_bytes() == data
            else:
                await asyncio.wait_for(asked.wait(), 30)
                for _ in range(20):  # the loop's turns: nothing starts the web seed
                    await asyncio.sleep(0)
                assert t.webseed_bytes == 0 and not t.complete.is_set()
            release.set()
    finally:
        release.set()
        tracker.close()
        await runner.cleanup()  # type: ignore[attr-defined]
