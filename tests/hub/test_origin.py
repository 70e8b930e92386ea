"""The HTTP origin through a real aiohttp server on 127.0.0.1, with sendfile on and off."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.hub.origin import (
    NOSENDFILE_ENV,
    ORIGIN_LIMITER_KEY,
    OriginLimiter,
    content_disposition,
    make_static_app,
    serve_file,
)
from swarmhub.hub.ranges import content_etag, format_http_date

SIZE = 300_000
TORRENT = "http://127.0.0.1:1/t/abc.torrent"


@dataclass
class Sender:
    """Which body path the test runs, and how often loop.sendfile was really called."""

    use_sendfile: bool
    calls: list[int] = field(default_factory=list)

    def check(self) -> None:
        assert bool(self.calls) is self.use_sendfile


@pytest.fixture(params=["sendfile", "no_sendfile"])
def sender(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Sender:
    on = request.param == "sendfile"
    if on:
        monkeypatch.delenv(NOSENDFILE_ENV, raising=False)
    else:
        monkeypatch.setenv(NOSENDFILE_ENV, "1")
    return Sender(on)  # loop.sendfile is wrapped to count calls in _start


@dataclass
class Origin:
    client: TestClient[web.Request, web.Application]
    root: Path
    data: bytes
    etag: str
    mtime: float
    limiter: OriginLimiter
    sender: Sender

    def url(self, name: str = "data.bin") -> str:
        return f"/f/{name}"


def _etag_of(path: Path) -> str:
    return content_etag(hashlib.sha256(path.read_bytes()).hexdigest())


async def _start(tmp_path: Path, sender: Sender, limiter: OriginLimiter) -> Origin:
    root = tmp_path / "files"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "data.bin").write_bytes(data)
    (root / "empty.bin").write_bytes(b"")
    mtime = 1_600_000_000.0
    os.utime(root / "data.bin", (mtime, mtime))
    etags = {p.name: _etag_of(p) for p in root.iterdir()}

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return await serve_file(
            request,
            root / name,
            etag=etags.get(name, '"none"'),
            content_type="application/pdf",
            filename="report é.pdf" if name == "data.bin" else None,
            limiter=limiter,
            torrent_url=TORRENT,
        )

    app = web.Application()
    app.router.add_route("*", "/f/{name}", handle)
    loop = asyncio.get_running_loop()
    real = loop.sendfile

    async def counting(transport: Any, file: Any, offset: int = 0, count: int | None = None) -> int:
        sender.calls.append(count or 0)
        return await real(transport, file, offset, count)

    loop.sendfile = counting  # type: ignore[method-assign,assignment]
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return Origin(client, root, data, etags["data.bin"], mtime, limiter, sender)


@pytest.fixture
async def origin(tmp_path: Path, sender: Sender) -> AsyncIterator[Origin]:
    o = await _start(tmp_path, sender, OriginLimiter())
    try:
        yield o
    finally:
        await o.client.close()


def _json_error(body: bytes) -> str:
    doc = json.loads(body)
    assert isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


# --- plain downloads -------------------------------------------------------------------


async def test_full_get_sends_whole_file_with_validators(origin: Origin) -> None:
    resp = await origin.client.get(origin.url())
    body = await resp.read()
    assert resp.status == 200
    assert body == origin.data
    h = resp.headers
    assert h["Content-Length"] == str(SIZE)
    assert h["ETag"] == origin.etag
    assert h["Last-Modified"] == format_http_date(origin.mtime)
    assert h["Accept-Ranges"] == "bytes"
    assert h["Content-Type"] == "application/pdf"
    assert h["Content-Disposition"] == content_disposition("report é.pdf")
    assert "filename*=UTF-8''report%20%C3%A9.pdf" in h["Content-Disposition"]
    assert "Content-Range" not in h
    origin.sender.check()
    await _wait_for(lambda: origin.limiter.transfers_active == 0)
    assert origin.limiter.bytes_served == SIZE
    assert origin.limiter.transfers_total == 1 and origin.limiter.transfers_active == 0


async def test_keep_alive_reuses_connection_after_body(origin: Origin) -> None:
    for _ in range(3):
        resp = await origin.client.get(origin.url(), headers={"Range": "bytes=10-19"})
        assert await resp.read() == origin.data[10:20]
    assert origin.limiter.transfers_total == 3


async def test_head_sends_headers_without_body(origin: Origin) -> None:
    resp = await origin.client.head(origin.url())
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(SIZE)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == b""
    assert origin.limiter.transfers_total == 0


async def test_zero_size_file_full_and_range(origin: Origin) -> None:
    resp = await origin.client.get(origin.url("empty.bin"))
    assert resp.status == 200 and await resp.read() == b""
    assert resp.headers["Content-Length"] == "0"
    resp = await origin.client.get(origin.url("empty.bin"), headers={"Range": "bytes=0-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */0"


async def test_missing_file_is_404_json(origin: Origin) -> None:
    resp = await origin.client.get(origin.url("nope.bin"))
    assert resp.status == 404
    assert "no such file" in _json_error(await resp.read())


async def test_directory_is_404_json(origin: Origin) -> None:
    (origin.root / "dir").mkdir()
    resp = await origin.client.get(origin.url("dir"))
    assert resp.status == 404


async def test_fifo_is_refused_without_hanging(origin: Origin) -> None:
    os.mkfifo(origin.root / "pipe")
    resp = await asyncio.wait_for(origin.client.get(origin.url("pipe")), 5)
    assert resp.status == 404


async def test_post_is_405_json(origin: Origin) -> None:
    resp = await origin.client.post(origin.url(), data=b"x")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"
    _json_error(await resp.read())


# --- ranges ----------------------------------------------------------------------------


async def test_single_range_is_206_with_content_range(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206
    assert await resp.read() == origin.data[1000:2000]
    assert resp.headers["Content-Range"] == f"bytes 1000-1999/{SIZE}"
    assert resp.headers["Content-Length"] == "1000"
    origin.sender.check()


async def test_suffix_range_sends_the_tail(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"Range": "bytes=-500"})
    assert resp.status == 206
    assert await resp.read() == origin.data[-500:]
    assert resp.headers["Content-Range"] == f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"


async def test_open_range_past_eof_is_clamped(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"Range": f"bytes={SIZE - 10}-99999999"})
    assert resp.status == 206
    assert await resp.read() == origin.data[-10:]


def _parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", content_type)
    assert m is not None, content_type
    delim = b"--" + m.group(1).encode()
    assert body.startswith(delim + b"\r\n")
    assert body.endswith(b"\r\n" + delim + b"--\r\n")
    inner = body[len(delim) + 2 : -(len(delim) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delim + b"\r\n"):
        head, _, payload = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers, payload))
    return parts


async def test_multi_range_is_multipart_byteranges(origin: Origin) -> None:
    spans = [(0, 100), (5000, 6000), (SIZE - 7, SIZE)]
    value = "bytes=0-99,5000-5999,-7"
    resp = await origin.client.get(origin.url(), headers={"Range": value})
    body = await resp.read()
    assert resp.status == 206
    assert len(body) == int(resp.headers["Content-Length"])
    assert "Content-Range" not in resp.headers
    parts = _parse_multipart(body, resp.headers["Content-Type"])
    assert len(parts) == 3
    for (headers, payload), (start, end) in zip(parts, spans, strict=True):
        assert headers["Content-Type"] == "application/pdf"
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{SIZE}"
        assert payload == origin.data[start:end]
    origin.sender.check()
    await _wait_for(lambda: origin.limiter.transfers_active == 0)
    assert origin.limiter.bytes_served == 100 + 1000 + 7


async def test_multi_range_boundary_is_random(origin: Origin) -> None:
    types = set()
    for _ in range(2):
        resp = await origin.client.get(origin.url(), headers={"Range": "bytes=0-0,9-9"})
        await resp.read()
        types.add(resp.headers["Content-Type"])
    assert len(types) == 2


async def test_overlapping_ranges_coalesced_to_one_part(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"Range": "bytes=0-99,50-199"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-199/{SIZE}"
    assert await resp.read() == origin.data[:200]


async def test_unsatisfiable_range_is_416(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"Range": f"bytes={SIZE}-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
    _json_error(await resp.read())


async def test_invalid_range_serves_full(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"Range": "bytes=9-1"})
    assert resp.status == 200 and await resp.read() == origin.data


async def test_range_on_head_is_ignored(origin: Origin) -> None:
    resp = await origin.client.head(origin.url(), headers={"Range": "bytes=0-9"})
    assert resp.status == 200 and resp.headers["Content-Length"] == str(SIZE)


# --- conditionals ----------------------------------------------------------------------


async def test_if_range_date_match_serves_partial(origin: Origin) -> None:
    h = {"Range": "bytes=0-9", "If-Range": format_http_date(origin.mtime)}
    resp = await origin.client.get(origin.url(), headers=h)
    assert resp.status == 206 and await resp.read() == origin.data[:10]


async def test_if_range_date_mismatch_serves_full(origin: Origin) -> None:
    h = {"Range": "bytes=0-9", "If-Range": format_http_date(origin.mtime - 3600)}
    resp = await origin.client.get(origin.url(), headers=h)
    assert resp.status == 200 and await resp.read() == origin.data


async def test_if_range_etag_match_serves_partial(origin: Origin) -> None:
    h = {"Range": "bytes=0-9", "If-Range": origin.etag}
    resp = await origin.client.get(origin.url(), headers=h)
    assert resp.status == 206 and await resp.read() == origin.data[:10]


async def test_if_range_etag_mismatch_serves_full(origin: Origin) -> None:
    h = {"Range": "bytes=0-9", "If-Range": '"sha256-other"'}
    resp = await origin.client.get(origin.url(), headers=h)
    assert resp.status == 200 and await resp.read() == origin.data


async def test_if_none_match_is_304_with_validators(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"If-None-Match": origin.etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == origin.etag
    assert resp.headers["Last-Modified"] == format_http_date(origin.mtime)
    assert await resp.read() == b""
    assert origin.limiter.transfers_total == 0


async def test_if_modified_since_is_304(origin: Origin) -> None:
    h = {"If-Modified-Since": format_http_date(origin.mtime + 10)}
    resp = await origin.client.get(origin.url(), headers=h)
    assert resp.status == 304


async def test_if_match_mismatch_is_412_json(origin: Origin) -> None:
    resp = await origin.client.get(origin.url(), headers={"If-Match": '"sha256-other"'})
    assert resp.status == 412
    _json_error(await resp.read())


async def test_if_unmodified_since_earlier_is_412(origin: Origin) -> None:
    h = {"If-Unmodified-Since": format_http_date(origin.mtime - 10)}
    resp = await origin.client.get(origin.url(), headers=h)
    assert resp.status == 412


# --- sendfile fallback -----------------------------------------------------------------


async def test_loop_without_sendfile_falls_back_to_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(NOSENDFILE_ENV, raising=False)
    o = await _start(tmp_path, Sender(True), OriginLimiter())
    try:

        async def no_sendfile(*args: Any, **kwargs: Any) -> int:
            o.sender.calls.append(1)
            raise NotImplementedError

        asyncio.get_running_loop().sendfile = no_sendfile  # type: ignore[method-assign]
        resp = await o.client.get(o.url(), headers={"Range": "bytes=0-9,100-199"})
        parts = _parse_multipart(await resp.read(), resp.headers["Content-Type"])
        assert [p for _, p in parts] == [o.data[:10], o.data[100:200]]
        assert o.sender.calls == [1]  # tried once, then reads for the rest
    finally:
        await o.client.close()


# --- limits ----------------------------------------------------------------------------


async def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class _VirtualRate(RateLimiter):
    """The origin's rate limit on a virtual clock: a wait advances the clock instead of
    sleeping, and each grant is recorded with the bytes the origin had served by then."""

    def __init__(self, rate: float, owner: OriginLimiter) -> None:
        self.now = 0.0
        self.owner = owner
        self.grants: list[tuple[float, int, int]] = []  # (clock, bytes served before, n)
        super().__init__(rate, clock=lambda: self.now)

    async def acquire(self, n: int) -> None:
        self.grants.append((self.now, self.owner.bytes_served, n))
        self.now += self.charge(n)


async def test_rate_cap_is_honoured(tmp_path: Path, sender: Sender) -> None:
    """Every byte sent was granted first, and the grants pace 2 MB at 4 MB/s (virtual time)."""
    rate = 4_000_000
    limiter = OriginLimiter(upload_rate=rate)
    paced = limiter.rate = _VirtualRate(rate, limiter)
    o = await _start(tmp_path, sender, limiter)
    try:
        big = o.root / "big.bin"
        big.write_bytes(os.urandom(2_000_000))
        resp = await o.client.get(o.url("big.bin"))
        body = await resp.read()
        assert body == big.read_bytes()
        await _wait_for(lambda: limiter.transfers_active == 0)  # the handler's last step
        assert limiter.bytes_served == 2_000_000
        # each grant came after the bytes of the grants before it went, and before its own
        granted = 0
        for _, served_before, n in paced.grants:
            assert served_before == granted
            assert 0 < n <= limiter.slice_size()
            granted += n
        assert granted == 2_000_000
        # 2 MB at 4 MB/s minus the 0.1 s burst: the last grant at 0.45 clock seconds
        burst = rate / 10
        assert paced.now == pytest.approx((2_000_000 - burst) / rate, abs=1e-9)
        o.sender.check()
    finally:
        await o.client.close()


async def test_overload_whole_file_gets_503_with_link_ranges_still_served(
    tmp_path: Path, sender: Sender
) -> None:
    limiter = OriginLimiter(
        max_transfers=1, upload_rate=1_000_000, retry_after=7, range_overflow=2
    )
    o = await _start(tmp_path, sender, limiter)
    slow: asyncio.Task[bytes] | None = None
    try:

        async def slow_download() -> bytes:
            async with aiohttp.ClientSession() as s:
                r = await s.get(o.client.make_url(o.url()))
                return await r.read()

        slow = asyncio.create_task(slow_download())  # SIZE at 1 MB/s: ~0.2 s+
        await _wait_for(lambda: limiter.transfers_active == 1)

        resp = await o.client.get(o.url())
        body = await resp.read()
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["Link"] == (
            f'<{TORRENT}>; rel="alternate"; type="application/x-bittorrent"'
        )
        doc = json.loads(body)
        assert "BitTorrent" in doc["error"] and doc["torrent"] == TORRENT
        assert limiter.rejected_total == 1

        resp = await o.client.get(o.url(), headers={"Range": "bytes=0-99"})
        assert resp.status == 206 and await resp.read() == o.data[:100]
        resp = await o.client.head(o.url())
        assert resp.status == 200

        assert await asyncio.wait_for(slow, 10) == o.data
        await _wait_for(lambda: limiter.transfers_active == 0)
        assert limiter.transfers_active == 0 and limiter.transfers_total == 2
        resp = await o.client.get(o.url("empty.bin"))  # free again
        assert resp.status == 200
    finally:
        if slow is not None and not slow.done():
            slow.cancel()
        await o.client.close()


def test_every_range_form_counts_against_the_cap_by_default() -> None:
    lim = OriginLimiter(max_transfers=2)
    assert lim.admit(whole_file=True) and lim.admit(whole_file=False)
    assert not lim.admit(whole_file=False) and not lim.admit(whole_file=True)
    assert (lim.transfers_active, lim.rejected_total) == (2, 2)


def test_range_overflow_policy() -> None:
    lim = OriginLimiter(max_transfers=2, range_overflow=2)
    assert lim.admit(whole_file=True) and lim.admit(whole_file=True)
    assert not lim.admit(whole_file=True)
    assert lim.admit(whole_file=False) and lim.admit(whole_file=False)
    assert not lim.admit(whole_file=False)
    assert (lim.transfers_active, lim.transfers_total, lim.rejected_total) == (4, 4, 2)
    lim.release()
    assert lim.admit(whole_file=False)
    unlimited = OriginLimiter()
    assert all(unlimited.admit(whole_file=True) for _ in range(1000))


def test_slice_size_follows_rate() -> None:
    assert OriginLimiter().slice_size() == 1 << 20
    assert OriginLimiter(upload_rate=4_000_000).slice_size() == 200_000
    assert OriginLimiter(upload_rate=1000).slice_size() == 16 << 10


def test_content_disposition_ascii_and_unicode() -> None:
    assert content_disposition("a.pdf") == 'attachment; filename="a.pdf"'
    v = content_disposition('ré"s.pdf')
    assert v == "attachment; filename=\"r__s.pdf\"; filename*=UTF-8''r%C3%A9%22s.pdf"


# --- the static app --------------------------------------------------------------------


@pytest.fixture
async def static(tmp_path: Path, sender: Sender) -> AsyncIterator[tuple[TestServer, Path]]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_bytes(b"hello world")
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "inside.txt").symlink_to(root / "sub" / "a.txt")
    server = TestServer(make_static_app(root))
    await server.start_server()
    try:
        yield server, root
    finally:
        await server.close()


async def _raw_get(server: TestServer, target: str) -> tuple[int, bytes]:
    """Send the request target as is (clients normalize dot segments away)."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_static_serves_files_with_content_hash_etag(
    static: tuple[TestServer, Path],
) -> None:
    server, _ = static
    async with aiohttp.ClientSession() as s:
        r = await s.get(server.make_url("/sub/a.txt"), headers={"Range": "bytes=6-"})
        assert r.status == 206 and await r.read() == b"world"
        assert r.headers["Content-Type"] == "text/plain"
        assert r.headers["ETag"] == content_etag(hashlib.sha256(b"hello world").hexdigest())
        r = await s.get(server.make_url("/inside.txt"))  # a symlink inside the root is fine
        assert r.status == 200 and await r.read() == b"hello world"
    assert server.app is not None
    limiter = server.app[ORIGIN_LIMITER_KEY]
    await _wait_for(lambda: limiter.transfers_active == 0)
    assert limiter.bytes_served == 16


async def test_static_etag_changes_with_content(static: tuple[TestServer, Path]) -> None:
    server, root = static
    async with aiohttp.ClientSession() as s:
        e1 = (await s.get(server.make_url("/sub/a.txt"))).headers["ETag"]
        (root / "sub" / "a.txt").write_bytes(b"changed!")
        os.utime(root / "sub" / "a.txt", (1, 1))
        r = await s.get(server.make_url("/sub/a.txt"))
        assert await r.read() == b"changed!" and r.headers["ETag"] != e1


@pytest.mark.parametrize(
    ("target", "statuses"),
    [
        ("/../secret.txt", {400, 404}),
        ("/%2e%2e/secret.txt", {400, 404}),
        ("/sub/%2e%2e/%2e%2e/secret.txt", {400, 404}),
        ("/sub/..%2f..%2fsecret.txt", {400, 404}),
        ("//etc/passwd", {400, 404}),
        ("/%2fetc%2fpasswd", {400, 404}),
        ("/sub/a.txt%00.png", {400}),
        ("/escape.txt", {404}),
        ("/sub", {404}),
        ("/nothing", {404}),
    ],
)
async def test_static_refuses_path_traversal(
    static: tuple[TestServer, Path], target: str, statuses: set[int]
) -> None:
    server, _ = static
    status, body = await _raw_get(server, target)
    assert status in statuses, (target, status, body)
    assert b"top secret" not in body and b"root:" not in body
    _json_error(body)
