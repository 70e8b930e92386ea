"""Session lifecycle: orderly shutdown, remove and re-add, listen_interfaces, thread pools."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hostile import poll
from test_transfer import make_data

from conftest import free_port, until
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import TorrentState
from swarmhub.errors import StorageError, SwarmhubError
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.settings import Settings


async def test_close_with_a_tracker_leaves_no_unclosed_http_client(tmp_path: Path) -> None:
    """The tracker loop's final 'stopped' announce ran after the HTTP client was closed and
    made a new one that nobody closed ("Unclosed client session" at every exit)."""
    loop = asyncio.get_running_loop()
    complaints: list[str] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: complaints.append(str(ctx.get("message"))))
    try:
        src = make_data(tmp_path / "src" / "payload", [100_000])
        url = f"http://127.0.0.1:{free_port()}/announce"  # nobody listens: announces fail
        meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024,
                              trackers=[[url]])
        async with Session(state_dir=tmp_path / "s") as session:
            torrent = await session.add(meta, src.parent)
            # Close only once the tracker loop has made its HTTP client and failed an
            # announce: the state the race needs, however slow the machine.
            tracker = torrent.swarm.tracker
            assert tracker is not None
            await poll(lambda: tracker.last_error is not None, 30, "a failed announce")
        with pytest.raises(SwarmhubError, match="closed"):
            await session.http()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert not [c for c in complaints if "Unclosed" in c], complaints


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[str]:
    """An aiohttp tracker ``app`` on a loopback port while the block runs: its announce URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/announce"
    finally:
        await runner.cleanup()


async def test_remove_and_close_announce_stopped_before_the_http_client_closes(
        tmp_path: Path) -> None:
    from swarmhub.hub.tracker import TrackerState, make_tracker_app

    state = TrackerState(interval=60, min_interval=5)
    async with _served(make_tracker_app(state)) as url:
        srcs = [make_data(tmp_path / c / "payload", [100_000], seed=i)
                for i, c in enumerate("ab")]
        metas = [create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024,
                                trackers=[[url]]) for src in srcs]
        async with Session(state_dir=tmp_path / "s") as session:
            await session.listen("127.0.0.1", 0)
            for meta, src in zip(metas, srcs, strict=True):
                await session.add(meta, src.parent)
            await poll(lambda: all(state.stats(meta.info_hash)[0] for meta in metas), 30,
                       "both torrents announced")  # a hang guard, not a 2 s margin
            assert all(state.stats(meta.info_hash)[0] == 1 for meta in metas)
            await session.remove(metas[0].info_hash)
            assert state.stats(metas[0].info_hash)[0] == 0  # said "stopped"
        assert state.stats(metas[1].info_hash)[0] == 0  # so did the one closed on exit


async def test_remove_forgets_the_torrent_and_it_can_be_added_again(tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [300_000])
    meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "sa") as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        first = await seeder.add(meta, src.parent)
        assert await seeder.remove(meta.info_hash)
        assert first.state is TorrentState.STOPPED
        assert seeder.torrent_for_hash(meta.info_hash_v1 or b"") is None
        assert not await seeder.remove(meta.info_hash)
        again = await seeder.add(meta, src.parent)  # the hub's delete + re-publish
        assert again.state is TorrentState.SEEDING
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        await asyncio.wait_for(t.complete.wait(), 30)
        assert t.error is None and again.uploaded >= meta.total_length


async def test_peer_filter_is_consulted_and_add_peers_dials_out(tmp_path: Path) -> None:
    """The embedder's admission hook (the hub's, for private torrents) sees every
    connection with its direction; ``add_peers`` dials addresses it found itself."""
    seen: list[bool] = []

    def outgoing_only(info_hash: bytes, addr: tuple[str, int], peer_id: bytes,
                      outgoing: bool) -> str | None:
        seen.append(outgoing)
        return None if outgoing else "only peers we dial"

    src = make_data(tmp_path / "src" / "payload", [200_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "sa", peer_filter=outgoing_only) as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, src.parent)
        lport = await leecher.listen("127.0.0.1", 0)
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        await poll(lambda: bool(seen), 30, "the filter saw the leecher's dial")
        assert seen == [False] and not st.peers  # its dial was refused
        st.add_peers([("127.0.0.1", lport)])
        await asyncio.wait_for(t.complete.wait(), 30)
        assert True in seen and t.error is None


async def test_listen_without_arguments_uses_listen_interfaces(tmp_path: Path) -> None:
    settings = Settings(listen_interfaces="127.0.0.1:0,[::1]:0")
    async with Session(settings, state_dir=tmp_path / "s") as session:
        try:
            port = await session.listen()
        except OSError:  # no IPv6 loopback here
            port = session.listen_port
        assert port > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
        del reader


async def test_hash_threads_size_the_hash_pool(tmp_path: Path) -> None:
    async with Session(Settings(hash_threads=3), state_dir=tmp_path / "s") as session:
        assert session.hash_threads == 3
        assert session.hash_pool._max_workers == 3  # type: ignore[attr-defined]
    async with Session(state_dir=tmp_path / "s") as session:
        assert session.hash_threads >= 1


async def test_a_local_protocol_error_is_logged_as_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Sending what the wire core refuses is our bug: it must not hide at debug level."""
    from swarmhub.wire import messages as m
    from swarmhub.wire.connection import Phase

    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    slow = Settings(download_rate_limit=20_000)
    async with Session(state_dir=tmp_path / "sa") as seeder, \
            Session(slow, state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, src.parent)
        await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])

        def ready() -> list[Any]:  # connections whose first message (the bitfield) is out
            return [p for p in st.peers if p.conn.our_phase is Phase.OPEN and not p.closed]

        await until(lambda: bool(ready()), "a connection past its first message")
        peer: Any = ready()[0]
        with caplog.at_level(logging.ERROR):
            peer.send(m.Bitfield(b"\xff"))  # Bitfield after the first message: refused
        assert any(r.levelno == logging.ERROR and "Bitfield" in r.getMessage()
                   for r in caplog.records)


async def test_rate_limits_change_while_torrents_run(tmp_path: Path) -> None:
    """The daemon changes limits at runtime: the session's reach every running torrent,
    a torrent's own stay its own."""
    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "s") as session:
        t = await session.add(meta, src.parent, seed_mode=True)
        session.set_rate_limits(1000, 2000)
        assert (session.settings.download_rate_limit, session.settings.upload_rate_limit) \
            == (1000, 2000)
        assert (t.settings.download_rate_limit, t.settings.upload_rate_limit) == (1000, 2000)
        t.set_rate_limits(300, 400)
        assert (t.settings.torrent_download_rate_limit,
                t.settings.torrent_upload_rate_limit) == (300, 400)
        assert t._down_bucket.rate == 300 and t._up_limiter.rate == 400
        assert session.settings.torrent_upload_rate_limit == 0, "the session's stay as they were"
        session.set_rate_limits(0, 0)
        assert t.settings.upload_rate_limit == 0 and t.settings.torrent_upload_rate_limit == 400


async def test_resume_data_unchanged_since_the_last_save_is_not_written_again(
        tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "s") as session:
        torrent = await session.add(meta, src.parent, seed_mode=True)
        resume = torrent.resume_file
        await torrent.save_resume()
        first = resume.stat().st_mtime_ns, resume.stat().st_ino
        await torrent.save_resume()  # nothing changed: the same file, not a new one
        assert (resume.stat().st_mtime_ns, resume.stat().st_ino) == first
        torrent.have[0] = 0  # a change is written (atomically: a new file)
        await torrent.save_resume()
        assert resume.stat().st_ino != first[1]


async def test_a_resave_of_the_same_pieces_touches_no_file(tmp_path: Path) -> None:
    """The exit's save after the completion's: no sync, no stat, no thread hop (it
    waited behind the completion's save on a busy machine)."""
    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "s") as session:
        torrent = await session.add(meta, src.parent, seed_mode=True)
        syncs: list[int] = []
        real_sync = torrent.storage.sync

        def counted_sync() -> None:
            syncs.append(1)
            real_sync()

        torrent.storage.sync = counted_sync  # type: ignore[method-assign]
        await asyncio.gather(torrent.save_resume(), torrent.save_resume())  # one at a time
        assert len(syncs) == 1 and torrent.resume_file.exists()
        await torrent.save_resume()
        assert len(syncs) == 1  # the same pieces: nothing to do
        torrent.have[0] = 0
        await torrent.save_resume()
        assert len(syncs) == 2


async def test_a_save_syncs_the_files_while_the_record_is_written_and_renames_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files' sync overlaps the record's own write and fsync (one journal commit at a
    completing get's exit, not two in a row), and the record takes its place only once
    the files are durable."""
    import swarmhub.storage.resume as resume_mod

    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "s") as session:
        assert session.settings.disk_threads >= 2
        torrent = await session.add(meta, src.parent, seed_mode=True)
        record_synced = threading.Event()
        seen: list[tuple[bool, bool]] = []
        real_fsync, real_sync = resume_mod.os.fsync, torrent.storage.sync

        def fsync(fd: int) -> None:
            real_fsync(fd)
            record_synced.set()

        def sync() -> None:  # bounded: reverted, the record waits for this sync instead
            seen.append((record_synced.wait(10), torrent.resume_file.exists()))
            real_sync()

        monkeypatch.setattr(resume_mod.os, "fsync", fsync)
        torrent.storage.sync = sync  # type: ignore[method-assign]
        await torrent.save_resume()
        assert seen == [(True, False)], "the record was synced during the files' sync, " \
            "and not yet in place"
        assert torrent.resume_file.exists()


async def test_a_failed_sync_leaves_no_record_claiming_the_pieces(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with Session(state_dir=tmp_path / "s") as session:
        torrent = await session.add(meta, src.parent, seed_mode=True)
        torrent.have[0] = 0
        await torrent.save_resume()
        before = torrent.resume_file.read_bytes()

        def broken() -> None:
            raise StorageError("cannot fsync payload: Input/output error")

        torrent.storage.sync = broken  # type: ignore[method-assign]
        torrent.have[0] = 1
        with caplog.at_level(logging.WARNING, logger="swarmhub.engine.ondisk"):
            await torrent.save_resume()
        assert "could not save resume data" in caplog.text
        assert torrent.resume_file.read_bytes() == before
        assert sorted(p.name for p in torrent.resume_file.parent.iterdir()) == \
            [torrent.resume_file.name], "no temp file left"


async def test_stop_saves_and_closes_without_waiting_for_the_trackers_stopped_reply(
        tmp_path: Path) -> None:
    """``stopped`` goes out at once but its reply is awaited last: the resume data is
    saved while the tracker still holds the request (its round trip to a busy hub came
    first and lengthened every ``get``'s exit)."""
    from aiohttp import web

    from conftest import until
    from swarmhub.bencode import bencode

    src = make_data(tmp_path / "src" / "payload", [100_000])
    seen: list[bool] = []
    resume: list[Path] = []

    async def announce(request: web.Request) -> web.Response:
        if request.query.get("event") == "stopped":
            # hold the reply until the torrent saved (a hang guard, not a margin)
            with contextlib.suppress(AssertionError):
                await until(lambda: resume[0].exists(), "the resume save", timeout=10)
            seen.append(resume[0].exists())
        return web.Response(body=bencode({b"interval": 60, b"peers": b""}))

    app = web.Application()
    app.router.add_get("/announce", announce)
    async with _served(app) as url:
        meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024,
                              trackers=[[url]])
        async with Session(state_dir=tmp_path / "s") as session:
            await session.listen("127.0.0.1", 0)
            torrent = await session.add(meta, src.parent, seed_mode=True)
            resume.append(torrent.resume_file)
            tracker = torrent.swarm.tracker
            assert tracker is not None
            await until(lambda: tracker.announced, "the first announce")
            assert not torrent.resume_file.exists()
            await torrent.stop()
        assert seen == [True]


@contextlib.asynccontextmanager
async def _seeding_behind_a_tracker(tmp_path: Path) -> AsyncIterator[Any]:
    """A seeding torrent that has announced once to a real loopback tracker: (the torrent,
    the tracker's state)."""
    from swarmhub.hub.tracker import TrackerState, make_tracker_app

    src = make_data(tmp_path / "src" / "payload", [100_000])
    state = TrackerState(interval=60, min_interval=5)
    async with _served(make_tracker_app(state)) as url:
        meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024,
                              trackers=[[url]])
        async with Session(state_dir=tmp_path / "s") as session:
            await session.listen("127.0.0.1", 0)
            torrent = await session.add(meta, src.parent, seed_mode=True)
            await until(lambda: state.stats(meta.info_hash)[0] == 1, "the first announce")
            yield torrent, state


async def test_stop_waits_for_a_silent_trackers_stopped_reply_only_so_long(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 9's tracker hygiene: ``stopped`` goes out on exit, but a tracker that never
    answers it must not hold the exit: the wait is :data:`STOPPED_WAIT` (shortened here),
    whatever the tracker client's own timeout."""
    from swarmhub.engine import tracker_driver
    from swarmhub.engine.tracker_driver import TrackerDriver

    monkeypatch.setattr(tracker_driver, "STOPPED_WAIT", 0.05)
    stopped: list[str] = []
    real = TrackerDriver.announce_once

    async def stuck_on_stopped(self: TrackerDriver, event: str | None) -> Any:
        if event != "stopped":
            return await real(self, event)
        stopped.append("sent")
        try:
            await asyncio.Event().wait()  # a tracker that never answers
        finally:
            stopped.append("given up")

    monkeypatch.setattr(TrackerDriver, "announce_once", stuck_on_stopped)
    async with _seeding_behind_a_tracker(tmp_path) as (torrent, _):
        stop = asyncio.ensure_future(torrent.stop())
        await asyncio.wait([stop], timeout=60)  # a hang guard: without the bound, forever
        if not stop.done():
            stop.cancel()
            pytest.fail("stop() still waits for the tracker's answer to 'stopped'")
        assert stopped == ["sent", "given up"]
        assert torrent.state is TorrentState.STOPPED


async def test_a_stopped_announce_cancelled_while_the_tracker_holds_it_is_cancelled(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ctrl-C during the wait for ``stopped``'s reply cancels that wait (and so
    ``stop()``): it used to swallow every exception, the cancellation included."""
    from swarmhub.engine.tracker_driver import TrackerDriver

    sent = asyncio.Event()
    real = TrackerDriver.announce_once

    async def stuck_on_first_stopped(self: TrackerDriver, event: str | None) -> Any:
        if event != "stopped" or sent.is_set():
            return await real(self, event)
        sent.set()
        await asyncio.Event().wait()  # a tracker that never answers

    monkeypatch.setattr(TrackerDriver, "announce_once", stuck_on_first_stopped)
    async with _seeding_behind_a_tracker(tmp_path) as (torrent, _):
        wait = asyncio.ensure_future(torrent.tracker.stopped())
        await asyncio.wait_for(sent.wait(), 60)
        wait.cancel()
        await asyncio.wait([wait], timeout=60)  # a hang guard
        assert wait.cancelled()


async def test_stopped_waits_for_an_announce_still_on_its_way(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``completed`` still on its way when the torrent stops goes first: ``stopped`` sent
    beside it could be handled first, and the tracker kept a ghost seeder until its TTL."""
    from swarmhub.engine.tracker_driver import TrackerDriver

    events: list[str | None] = []
    held = asyncio.get_running_loop().create_future()
    real = TrackerDriver.announce_once

    async def holding_completed(self: TrackerDriver, event: str | None) -> Any:
        events.append(event)
        if event == "completed":
            await held  # the tracker holds its answer until the test lets it go
        return await real(self, event)

    monkeypatch.setattr(TrackerDriver, "announce_once", holding_completed)
    async with _seeding_behind_a_tracker(tmp_path) as (torrent, _):
        events.clear()
        completed = asyncio.ensure_future(torrent.tracker.announce("completed"))
        await until(lambda: events == ["completed"], "the completed announce")
        stop = asyncio.ensure_future(torrent.stop())
        # the stop gets on (resume data saved) while the completed announce is held
        await until(lambda: torrent.resume_file.exists(), "the resume save")
        assert events == ["completed"]
        held.set_result(None)
        await asyncio.wait([stop, completed], timeout=60)  # a hang guard
        assert stop.done() and completed.done()
        assert events == ["completed", "stopped"]


@pytest.mark.parametrize("at_stop", [False, True], ids=["completed-then-stopped", "folded"])
async def test_a_download_that_stops_at_completion_can_leave_completed_to_stopped(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, at_stop: bool) -> None:
    """A hub ``get`` exits as it completes: with ``completed_at_stop`` its tracker hears
    one announce at the end, ``stopped`` with left=0, which the hub's tracker counts as
    the completed download (as aria2's); without it, ``completed`` then ``stopped`` (the
    second waits for the first's answer). Either way the tracker ends with the download
    counted and the leecher gone."""
    from swarmhub.engine.tracker_driver import TrackerDriver

    events: list[tuple[str | None, int]] = []
    real = TrackerDriver.announce_once

    async def noting(self: TrackerDriver, event: str | None) -> Any:
        if self.torrent.seed_mode is False:  # the downloader's, not the seed's
            events.append((event, self.torrent.meta.total_length
                           - self.torrent.swarm.bytes_have()))
        return await real(self, event)

    monkeypatch.setattr(TrackerDriver, "announce_once", noting)
    async with _seeding_behind_a_tracker(tmp_path) as (seed, state):
        async with Session(state_dir=tmp_path / "s2") as session:
            await session.listen("127.0.0.1", 0)
            t = await session.add(seed.meta, tmp_path / "dl", peers=[seed.session.listen_addr])
            t.tracker.completed_at_stop = at_stop
            await asyncio.wait_for(t.complete.wait(), 60)
            await t.stop()
        assert [e for e, _ in events] == (["started", "stopped"] if at_stop else
                                          ["started", "completed", "stopped"])
        assert events[-1] == ("stopped", 0)
        assert state.stats(seed.meta.info_hash) == (1, 1, 0)  # counted, and gone
