"""Asking a hub for a file's catalog entry and its .torrent at once (client.hub_file_torrent).

A stand-in hub over loopback: its entry handler answers only once the torrent request has
arrived (so the two are in flight together: a round trip less before a hybrid download),
and its entry points ``torrent_url`` at another path, used when ``/t/<id>.torrent`` fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from conftest import unread_failures_under_uvloop
from swarmhub.client import hub_file_torrent
from swarmhub.discovery.httpget import HttpClient
from swarmhub.downloads import hub_meta
from swarmhub.errors import AuthError
from swarmhub.metainfo import create_torrent, torrent_bytes


@dataclass
class Hub:
    base: str
    #: paths asked for, in order
    asked: list[str] = field(default_factory=list)
    #: /t/<id>.torrent answers 404 (a proxy mapping only some paths)
    short_path_missing: bool = False
    #: the ``peer_id`` of each entry request that gave one
    peer_ids: list[str] = field(default_factory=list)
    #: the query string of each /t/<id>.torrent request, and what it answers
    torrent_queries: list[str] = field(default_factory=list)
    torrent: bytes = b"short-path torrent"


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    torrent_seen = asyncio.Event()
    state = Hub("")

    async def entry(request: web.Request) -> web.Response:
        state.asked.append(request.path)
        if request.match_info["id"] != "abc":
            return web.json_response({"error": "no such file"}, status=404)
        if not state.short_path_missing:  # hang guard only: the request is already out
            await asyncio.wait_for(torrent_seen.wait(), 30)
        body = {
            "id": "abc", "name": "f.bin", "size": 3, "sha256": "00", "url": f"{state.base}/f/abc",
            "torrent_url": f"{state.base}/elsewhere/abc.torrent"}
        if "peer_id" in request.query:  # as the hub: the swarm, and gets about to join
            state.peer_ids.append(request.query["peer_id"])
            body |= {"seeders": 1, "leechers": 2, "pending": 3}
        return web.json_response(body)

    async def short(request: web.Request) -> web.Response:
        state.asked.append(request.path)
        state.torrent_queries.append(request.query_string)
        torrent_seen.set()
        if state.short_path_missing:
            return web.Response(status=404)
        return web.Response(body=state.torrent)

    async def elsewhere(request: web.Request) -> web.Response:
        state.asked.append(request.path)
        return web.Response(body=b"entry-path torrent")

    app = web.Application()
    app.router.add_get("/api/files/{id}", entry)
    app.router.add_get("/t/abc.torrent", short)
    app.router.add_get("/elsewhere/abc.torrent", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_the_torrent_is_asked_for_beside_the_entry(hub: Hub) -> None:
    async with HttpClient() as http:
        info, torrent = await hub_file_torrent(http, hub.base, "abc", None)
    assert info.name == "f.bin"
    assert torrent == b"short-path torrent"
    assert "/elsewhere/abc.torrent" not in hub.asked


async def test_the_entrys_torrent_url_is_the_fallback(hub: Hub) -> None:
    hub.short_path_missing = True
    async with HttpClient() as http:
        _, torrent = await hub_file_torrent(http, hub.base, "abc", None)
    assert torrent == b"entry-path torrent"
    assert hub.asked[-1] == "/elsewhere/abc.torrent"


async def test_the_entrys_error_is_the_one_raised(hub: Hub) -> None:
    async with HttpClient() as http:
        with pytest.raises(AuthError, match="no such file"):
            await hub_file_torrent(http, hub.base, "nope", None)


async def test_a_swarm_download_says_its_peer_id_and_hears_who_else_is_coming(
        hub: Hub) -> None:
    """The hub counts a get as about to join until it announces: the entry request says
    the peer id it will announce with, and the gets still on their way count as leechers
    (a crowd starting at once must not all read "alone" and go to HTTP early)."""
    async with HttpClient() as http:
        info, _ = await hub_file_torrent(http, hub.base, "abc", None, b"\x01" * 20)
        plain, _ = await hub_file_torrent(http, hub.base, "abc", None)
    assert hub.peer_ids == ["01" * 20]
    assert info.swarm == (1, 2 + 3)
    assert plain.swarm is None


async def test_a_swarm_get_asks_for_the_torrent_without_piece_layers(
        hub: Hub, tmp_path: Path) -> None:
    """``swarmhub get`` (hub_meta) takes the short form, a third of a hybrid torrent's
    bytes (the hub sends one to every client of a crowd at once), and parses it without
    layers; other callers (the daemon) still ask for the whole torrent."""
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 1024)
    full = create_torrent(tmp_path / "f.bin", piece_length=16384)
    assert full.piece_layers
    hub.torrent = torrent_bytes(dataclasses.replace(full, piece_layers={}))
    async with HttpClient() as http:

        async def session_http() -> HttpClient:
            return http

        session = SimpleNamespace(http=session_http, peer_id=b"\x01" * 20,
                                  expect_swarm=lambda *swarm: None)

        async def no_http(info: object) -> bool:
            raise AssertionError("a hybrid get does not start over HTTP")

        meta = await hub_meta(session, f"{hub.base}/f/abc", "hybrid", None,  # type: ignore[arg-type]
                              no_http)
        await hub_file_torrent(http, hub.base, "abc", None)
    assert hub.torrent_queries == ["piece_layers=0", ""]
    assert meta is not None and not meta.piece_layers
    assert meta.info_hash == full.info_hash and meta.url_list == full.url_list



async def test_a_failed_entry_waits_for_the_torrent_request_rather_than_cancelling_it() -> None:
    """The entry's error is raised once the torrent request (to the same server) has ended
    too; that request is not cancelled (see the uvloop test below for why)."""
    loop = asyncio.get_running_loop()
    answers: dict[str, asyncio.Future[None]] = {}

    class FailingHttp:
        async def get(self, url: str, headers: object = None) -> None:
            answers[url] = fut = loop.create_future()
            await fut

    call = asyncio.ensure_future(
        hub_file_torrent(FailingHttp(), "https://hub", "abc", None))  # type: ignore[arg-type]
    for _ in range(100):  # bounded: both requests are out within a few turns
        if len(answers) == 2:
            break
        await asyncio.sleep(0)
    entry = next(fut for url, fut in answers.items() if "/api/files/" in url)
    torrent = next(fut for url, fut in answers.items() if url.endswith(".torrent"))
    entry.set_exception(ConnectionResetError("entry"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not torrent.cancelled() and not call.done()
    torrent.set_exception(ConnectionResetError("torrent"))
    with pytest.raises(ConnectionResetError, match="entry"):
        await call


def test_https_to_plain_http_leaves_no_unread_tls_failure_under_uvloop() -> None:
    """`get https://` to a plain-HTTP hub: both requests fail their TLS handshakes at
    about the same time. Cancelling the torrent request's uvloop TLS connect mid-handshake
    left its failure in a future nobody read: "Future exception was never retrieved" and a
    traceback above the CLI's one-line error (about 1 in 3 tries on loopback before)."""

    async def tries(base: str) -> None:
        for _ in range(40):
            async with HttpClient() as client:
                with pytest.raises(OSError):
                    await hub_file_torrent(client, base, "abc", None)

    assert unread_failures_under_uvloop(tries) == []
