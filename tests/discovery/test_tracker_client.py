"""HTTP tracker client: URL building, response parsing, tiers, and real HTTP round trips."""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import free_port
from swarmhub import discovery
from swarmhub.bencode import bencode
from swarmhub.discovery import httpget
from swarmhub.discovery.tracker import (
    AnnounceRequest,
    AnnounceResponse,
    TrackerTiers,
    announce,
    build_announce_url,
    parse_announce_response,
    parse_scrape_response,
    scrape,
    scrape_url,
)
from swarmhub.errors import TrackerError
from swarmhub.hub.tracker import TrackerState, make_tracker_app

# The example from BEP 3: this hash must be escaped to exactly this text.
BEP3_HASH = bytes.fromhex("123456789abcdef123456789abcdef123456789a")
BEP3_ESCAPED = "%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A"


def make_req(**kw: object) -> AnnounceRequest:
    base: dict[str, object] = {
        "info_hash": BEP3_HASH,
        "peer_id": b"-SH0100-" + b"\x00\xff 123456&=+",
        "port": 6881,
        "uploaded": 1,
        "downloaded": 2,
        "left": 3,
        "event": "started",
    }
    base.update(kw)
    return AnnounceRequest(**base)  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for part in urllib.parse.urlsplit(url).query.split("&"):
        k, _, v = part.partition("=")
        out.setdefault(k, []).append(urllib.parse.unquote_to_bytes(v))
    return out


# ------------------------------------------------------------------------ URL building


def test_info_hash_is_escaped_byte_exact_as_in_bep3() -> None:
    url = build_announce_url("http://t.example/announce", make_req())
    assert f"info_hash={BEP3_ESCAPED}&" in url
    q = query_of(url)
    assert q["info_hash"] == [BEP3_HASH]
    assert q["peer_id"] == [b"-SH0100-\x00\xff 123456&=+"]
    assert q["port"] == [b"6881"] and q["left"] == [b"3"] and q["event"] == [b"started"]
    assert q["compact"] == [b"1"] and q["numwant"] == [b"50"]


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_any_binary_hash_and_peer_id_round_trip(info_hash: bytes, peer_id: bytes) -> None:
    url = build_announce_url("http://t/announce", make_req(info_hash=info_hash, peer_id=peer_id))
    q = query_of(url)
    assert q["info_hash"] == [info_hash] and q["peer_id"] == [peer_id]
    # Only unreserved characters may appear unescaped (BEP 3).
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_~%")
    assert set(url.split("info_hash=")[1].split("&")[0]) <= allowed


def test_existing_query_such_as_a_passkey_is_kept() -> None:
    url = build_announce_url("http://t/announce.php?passkey=s3cr%2Bt#frag", make_req())
    assert url.startswith("http://t/announce.php?passkey=s3cr%2Bt&info_hash=")
    assert "#" not in url
    assert query_of(url)["passkey"] == [b"s3cr+t"]


def test_optional_fields_are_sent_only_when_set() -> None:
    plain = query_of(build_announce_url("http://t/a", make_req(event=None)))
    assert "event" not in plain and "key" not in plain and "trackerid" not in plain
    full = query_of(
        build_announce_url(
            "http://t/a",
            make_req(key="k 1", tracker_id=b"\x01id", ip="10.0.0.1", compact=False, numwant=7),
        )
    )
    assert full["key"] == [b"k 1"] and full["trackerid"] == [b"\x01id"]
    assert full["ip"] == [b"10.0.0.1"] and full["compact"] == [b"0"] and full["numwant"] == [b"7"]


@pytest.mark.parametrize(
    "kw",
    [
        {"info_hash": b"x" * 19},
        {"peer_id": b"x" * 21},
        {"port": 70000},
        {"left": -1},
        {"event": "paused-forever"},
    ],
)
def test_invalid_request_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(TrackerError):
        make_req(**kw)


def test_scrape_url_follows_the_bep48_convention() -> None:
    assert scrape_url("http://t/announce") == "http://t/scrape"
    assert scrape_url("http://t/x/announce.php?pk=1") == "http://t/x/scrape.php?pk=1"
    assert scrape_url("https://t:8443/announce?a=b") == "https://t:8443/scrape?a=b"
    assert scrape_url("http://t/a") is None
    assert scrape_url("http://t/announce/x") is None
    assert scrape_url("udp://t:80/announce") is None


# ------------------------------------------------------------------------ response parsing


def test_compact_peers_and_stats() -> None:
    body = bencode(
        {
            b"interval": 900,
            b"min interval": 60,
            b"complete": 3,
            b"incomplete": 4,
            b"tracker id": b"abc",
            b"peers": bytes([10, 0, 0, 1, 0x1A, 0xE1, 192, 168, 1, 2, 0, 80]),
        }
    )
    resp = parse_announce_response(body)
    assert resp == AnnounceResponse(
        interval=900,
        min_interval=60,
        peers=[("10.0.0.1", 6881), ("192.168.1.2", 80)],
        complete=3,
        incomplete=4,
        warning=None,
        tracker_id=b"abc",
    )


def test_dict_peers_and_peers6() -> None:
    v6 = bytes.fromhex("20010db8000000000000000000000001") + (51413).to_bytes(2, "big")
    body = bencode(
        {
            b"interval": 1800,
            b"peers": [
                {b"ip": b"10.1.2.3", b"port": 1234, b"peer id": b"p" * 20},
                {b"ip": b"peer.example", b"port": 99},
                {b"ip": b"10.9.9.9", b"port": 0},  # unconnectable: skipped
            ],
            b"peers6": v6,
        }
    )
    resp = parse_announce_response(body)
    assert resp.peers == [("10.1.2.3", 1234), ("peer.example", 99), ("2001:db8::1", 51413)]
    assert resp.min_interval is None and resp.complete is None


def test_failure_reason_becomes_tracker_error_with_its_text() -> None:
    with pytest.raises(TrackerError, match="unregistered torrent"):
        parse_announce_response(bencode({b"failure reason": b"unregistered torrent"}))


def test_warning_is_kept_and_missing_interval_defaults() -> None:
    resp = parse_announce_response(bencode({b"warning message": b"slow down", b"peers": b""}))
    assert resp.warning == "slow down" and resp.interval == 1800 and resp.peers == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>oops</html>",
        b"i42e",
        bencode({b"interval": b"soon"}),
        bencode({b"interval": -5}),
        bencode({b"peers": b"12345"}),
        bencode({b"peers": [b"not a dict"]}),
        bencode({b"peers": [{b"ip": 1, b"port": 1}]}),
        bencode({b"peers": 7}),
        bencode({b"peers6": b"x" * 17}),
    ],
)
def test_malformed_bodies_raise_tracker_error(body: bytes) -> None:
    with pytest.raises(TrackerError):
        parse_announce_response(body)


_bvalues = st.recursive(
    st.integers(-(2**40), 2**40) | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    b"interval",
                    b"peers",
                    b"peers6",
                    b"ip",
                    b"port",
                    b"complete",
                    b"failure reason",
                    b"warning message",
                    b"tracker id",
                    b"min interval",
                ]
            )
            | st.binary(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=200), _bvalues.map(bencode)))
def test_any_body_parses_or_raises_tracker_error(body: bytes) -> None:
    try:
        resp = parse_announce_response(body)
    except TrackerError:
        return
    assert all(isinstance(h, str) and 0 < p < 65536 for h, p in resp.peers)


@settings(max_examples=200)
@given(st.one_of(st.binary(max_size=200), _bvalues.map(lambda v: bencode({b"files": v}))))
def test_any_scrape_body_parses_or_raises_tracker_error(body: bytes) -> None:
    try:
        stats = parse_scrape_response(body)
    except TrackerError:
        return
    assert all(len(ih) == 20 and min(v) >= 0 for ih, v in stats.items())


# -------------------------------------------------------------------------------- tiers


class FakeAnnouncer:
    """Answers from a table: URL -> response or TrackerError; records every call."""

    def __init__(self, working: set[str]) -> None:
        self.working = working
        self.calls: list[tuple[str, bytes | None]] = []

    async def __call__(self, url: str, req: AnnounceRequest) -> AnnounceResponse:
        self.calls.append((url, req.tracker_id))
        if url not in self.working:
            raise TrackerError(f"{url}: connection refused")
        return AnnounceResponse(1800, None, [("10.0.0.1", 1)], 1, 0, None, b"id-" + url.encode())


async def test_tiers_shuffle_once_then_promote_the_working_tracker() -> None:
    tiers = [["http://a/announce", "http://b/announce", "http://c/announce"], ["http://d/x"]]
    expected = list(tiers[0])
    random.Random(7).shuffle(expected)
    fake = FakeAnnouncer(working={expected[2]})
    tt = TrackerTiers(tiers, random.Random(7), announcer=fake)
    assert tt.tiers[0] == expected  # shuffled within the tier, with the given rng

    resp = await tt.announce(make_req())
    assert [u for u, _ in fake.calls] == expected  # tried in order, stopped at the first hit
    assert resp.peers == [("10.0.0.1", 1)]
    assert tt.tiers[0] == [expected[2], expected[0], expected[1]]  # promoted to the front
    assert tt.tiers[1] == ["http://d/x"]

    fake.calls.clear()
    await tt.announce(make_req(event=None))
    # Straight to the promoted tracker, now with the tracker id it handed out.
    assert fake.calls == [(expected[2], b"id-" + expected[2].encode())]


async def test_tiers_fall_through_to_the_next_tier_and_report_all_failures() -> None:
    fake = FakeAnnouncer(working={"http://second/announce"})
    tt = TrackerTiers(
        [["udp://first:80/announce", "http://dead/announce"], ["http://second/announce"]],
        random.Random(1),
        announcer=fake,
    )
    await tt.announce(make_req())
    assert fake.calls[-1][0] == "http://second/announce" and len(fake.calls) == 3

    fake.working.clear()
    with pytest.raises(TrackerError, match="every tracker failed") as info:
        await tt.announce(make_req())
    assert "http://dead/announce" in str(info.value) and "http://second" in str(info.value)

    with pytest.raises(TrackerError, match="no trackers"):
        await TrackerTiers([[], []], random.Random(1), announcer=fake).announce(make_req())


async def test_real_tiers_skip_udp_and_dead_trackers(tracker_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/announce"
    tt = TrackerTiers([["udp://127.0.0.1:1/announce"], [dead], [tracker_url]], random.Random(0))
    resp = await tt.announce(make_req(left=0))
    assert resp.complete == 1


# ------------------------------------------------------------------------ real HTTP I/O


@pytest.fixture
async def tracker_url() -> AsyncIterator[str]:
    runner = web.AppRunner(make_tracker_app(TrackerState(interval=900, min_interval=30)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/announce?passkey=x%2By"
    finally:
        await runner.cleanup()


async def test_announce_and_scrape_against_our_tracker(tracker_url: str) -> None:
    peer_a, peer_b = b"A" * 20, b"B" * 20
    first = await announce(tracker_url, make_req(peer_id=peer_a, port=1111, left=0))
    assert first.interval == 900 and first.min_interval == 30
    assert first.peers == [] and first.complete == 1 and first.incomplete == 0
    second = await announce(tracker_url, make_req(peer_id=peer_b, port=2222))
    assert second.peers == [("127.0.0.1", 1111)]
    assert (second.complete, second.incomplete) == (1, 1)
    dict_form = await announce(
        tracker_url, make_req(peer_id=peer_b, port=2222, compact=False, event=None)
    )
    assert dict_form.peers == [("127.0.0.1", 1111)]
    stats = await scrape(tracker_url, [BEP3_HASH, b"\x00" * 20])
    assert stats == {BEP3_HASH: (1, 0, 1), b"\x00" * 20: (0, 0, 0)}


async def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/announce"
    with pytest.raises(TrackerError, match=f"127.0.0.1:{url.split(':')[2]}"):
        await announce(url, make_req(), timeout=2)


async def test_udp_url_without_a_port_is_refused() -> None:
    with pytest.raises(TrackerError, match="needs a host and a port"):
        await announce("udp://127.0.0.1/announce", make_req())


async def test_silent_tracker_times_out_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client gives up on its own timer, set to the bound asked for: the tracker holds
    the request open until the test ends, and the bound handed to the HTTP client is
    recorded (the outer deadline only guards against a hang, it measures nothing)."""
    release = asyncio.Event()
    requests = 0
    handlers: list[asyncio.Task[Any]] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            if await reader.read(65536):
                requests += 1
            await release.wait()
        finally:
            writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/announce"
    try:
        bounds: list[float] = []
        get = httpget.get

        def recording_get(*args: Any, **kwargs: Any) -> Any:
            bounds.append(kwargs["timeout"])
            return get(*args, **kwargs)

        monkeypatch.setattr(httpget, "get", recording_get)
        with pytest.raises(TrackerError, match=f"{url}: tracker did not answer within 0.5 s"):
            await asyncio.wait_for(announce(url, make_req(), timeout=0.5), 30)
        assert bounds == [0.5]
        assert requests == 1 and not release.is_set()  # asked, and never answered
    finally:
        release.set()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        # the handlers close their writers once released
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)


async def test_http_errors_and_failure_bodies_with_error_status() -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/bad/announce":
            return web.Response(status=403, body=bencode({b"failure reason": b"bad passkey"}))
        if request.path == "/junk/announce":
            return web.Response(body=b"<html>")
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with pytest.raises(TrackerError, match="bad passkey"):
            await announce(f"{base}/bad/announce", make_req())
        with pytest.raises(TrackerError, match="HTTP 500"):
            await announce(f"{base}/err/announce", make_req())
        with pytest.raises(TrackerError, match=f"{base}/junk/announce: .*not bencode"):
            await announce(f"{base}/junk/announce", make_req())
    finally:
        await runner.cleanup()


def test_package_reexports() -> None:
    assert discovery.announce is announce and discovery.TrackerTiers is TrackerTiers
    assert set(discovery.__all__) <= set(dir(discovery))
