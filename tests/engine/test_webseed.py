"""Web seed client (BEP 19): request planning, and fetches from loopback HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.discovery.httpget import HttpClient
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.webseed import (
    RangeRequest,
    Segment,
    WebSeed,
    WebSeedBusy,
    WebSeedError,
    file_url,
    plan_requests,
)
from swarmhub.hub.origin import OriginLimiter, make_static_app
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import FileEntry, Metainfo, TorrentVersion
from swarmhub.storage.verify import PieceVerifier

KIB = 1024
MIB = 1024 * 1024


# -- planning (pure) -------------------------------------------------------------------------


def layout(
    piece_length: int, files: list[tuple[str | None, int]], *, single: bool = False
) -> Metainfo:
    """A Metainfo with just a piece space: ``(path, length)``, ``None`` for a pad."""
    entries = []
    offset = 0
    for path, length in files:
        if path is None:
            entries.append(FileEntry((".pad", str(length)), length, offset, pad=True, attr="p"))
        else:
            entries.append(FileEntry(tuple(path.split("/")), length, offset))
        offset += length
    return Metainfo(
        name=files[0][0] if single and files[0][0] else "my torrent",
        piece_length=piece_length,
        files=tuple(entries),
        total_length=offset,
        info_bytes=b"",
        info_hash_v1=bytes(20),
        info_hash_v2=None,
        pieces_v1=None,
        single_file=single,
    )


def spans(reqs: list[RangeRequest]) -> list[tuple[str, int, int]]:
    return [(r.url.rsplit("/", 1)[-1], r.start, r.end) for r in reqs]


def test_single_file_url_is_the_file_itself_unless_it_ends_with_a_slash() -> None:
    meta = layout(16 * KIB, [("report #1 é?.pdf", 40000)], single=True)
    entry = meta.files[0]
    assert file_url(meta, "http://h/f/abc/report.pdf", entry) == "http://h/f/abc/report.pdf"
    assert file_url(meta, "http://h/pub/", entry) == "http://h/pub/report%20%231%20%C3%A9%3F.pdf"


def test_multi_file_url_is_folder_name_path_each_component_encoded() -> None:
    meta = layout(16 * KIB, [("dir é/a#b?.txt", 10), ("100%+ x/c d", 10)])
    a, b = meta.files
    want_a = "http://h/pub/my%20torrent/dir%20%C3%A9/a%23b%3F.txt"
    assert file_url(meta, "http://h/pub/", a) == want_a
    # a multi-file URL without the trailing slash is a folder all the same (as in libtorrent)
    assert file_url(meta, "http://h/pub", a) == want_a
    assert file_url(meta, "http://h/pub/", b) == "http://h/pub/my%20torrent/100%25%2B%20x/c%20d"


def test_single_file_adjacent_pieces_coalesce_up_to_max_request() -> None:
    pl = 16 * KIB
    meta = layout(pl, [("f.bin", 10 * pl + 100)], single=True)
    reqs = plan_requests(meta, range(11), "http://h/f.bin", 4 * pl)
    assert spans(reqs) == [
        ("f.bin", 0, 4 * pl - 1),
        ("f.bin", 4 * pl, 8 * pl - 1),
        ("f.bin", 8 * pl, 10 * pl + 99),
    ]
    assert reqs[0].range_header == f"bytes=0-{4 * pl - 1}"
    assert reqs[0].segments == tuple(Segment(i, 0, pl) for i in range(4))
    assert reqs[2].segments == (Segment(8, 0, pl), Segment(9, 0, pl), Segment(10, 0, 100))
    assert all(r.file_length == 10 * pl + 100 for r in reqs)
    # one big request when it fits
    assert len(plan_requests(meta, range(11), "http://h/f.bin", 4 * MIB)) == 1


def test_gaps_break_requests_and_input_order_and_duplicates_do_not_matter() -> None:
    pl = 16 * KIB
    meta = layout(pl, [("f.bin", 10 * pl)], single=True)
    reqs = plan_requests(meta, [9, 6, 0, 1, 5, 2, 1, 9], "http://h/f.bin", 4 * MIB)
    assert spans(reqs) == [
        ("f.bin", 0, 3 * pl - 1),
        ("f.bin", 5 * pl, 7 * pl - 1),
        ("f.bin", 9 * pl, 10 * pl - 1),
    ]
    assert plan_requests(meta, [], "http://h/f.bin", 4 * MIB) == []
    with pytest.raises(IndexError):
        plan_requests(meta, [10], "http://h/f.bin", 4 * MIB)
    with pytest.raises(IndexError):
        plan_requests(meta, [-1], "http://h/f.bin", 4 * MIB)
    with pytest.raises(ValueError):
        plan_requests(meta, [0], "http://h/f.bin", 0)


def test_max_request_below_piece_length_splits_pieces_and_odd_sizes_round_down() -> None:
    pl = 64 * KIB
    meta = layout(pl, [("f.bin", 2 * pl)], single=True)
    reqs = plan_requests(meta, [1], "u", 16 * KIB)
    assert [(r.start, r.end) for r in reqs] == [
        (pl + k * 16 * KIB, pl + (k + 1) * 16 * KIB - 1) for k in range(4)
    ]
    assert [r.segments for r in reqs] == [(Segment(1, k * 16 * KIB, 16 * KIB),) for k in range(4)]
    # 100 KiB holds one 64 KiB piece: requests end on piece boundaries
    reqs = plan_requests(meta, [0, 1], "u", 100 * KIB)
    assert [(r.start, r.end) for r in reqs] == [(0, pl - 1), (pl, 2 * pl - 1)]


def test_v1_multi_file_without_pads_spans_files_with_one_request_per_file() -> None:
    pl = 16 * KIB
    meta = layout(pl, [("a", 20000), ("empty", 0), ("sub/b", 30000), ("c", 5000)])
    reqs = plan_requests(meta, range(meta.num_pieces), "http://h/", 4 * MIB)
    assert spans(reqs) == [("a", 0, 19999), ("b", 0, 29999), ("c", 0, 4999)]
    assert reqs[1].url == "http://h/my%20torrent/sub/b"
    assert reqs[0].segments == (Segment(0, 0, pl), Segment(1, 0, 20000 - pl))
    assert reqs[1].segments == (
        Segment(1, 20000 - pl, 2 * pl - 20000),
        Segment(2, 0, pl),
        Segment(3, 0, 50000 - 3 * pl),
    )
    assert reqs[2].segments == (Segment(3, 50000 - 3 * pl, 5000),)
    # only piece 1 (the one straddling a and b): two requests, a's tail and b's head
    reqs = plan_requests(meta, [1], "http://h/", 4 * MIB)
    assert spans(reqs) == [("a", pl, 19999), ("b", 0, 2 * pl - 20000 - 1)]


def test_pads_are_never_requested() -> None:
    pl = 16 * KIB
    meta = layout(pl, [("a", 20000), (None, 2 * pl - 20000), ("b", 2 * pl), ("c", 100)])
    reqs = plan_requests(meta, range(meta.num_pieces), "http://h/", 4 * MIB)
    assert spans(reqs) == [("a", 0, 19999), ("b", 0, 2 * pl - 1), ("c", 0, 99)]
    assert not any(".pad" in r.url for r in reqs)
    assert reqs[0].segments[-1] == Segment(1, 0, 20000 - pl)  # the rest of piece 1 is pad


def test_chunks_of_a_multi_file_run_cut_files_at_piece_boundaries() -> None:
    pl = 16 * KIB
    meta = layout(pl, [("a", 3 * pl + 10), ("b", 5 * pl)])
    reqs = plan_requests(meta, range(meta.num_pieces), "http://h/", 2 * pl)
    assert spans(reqs) == [
        ("a", 0, 2 * pl - 1),
        ("a", 2 * pl, 3 * pl + 9),
        ("b", 0, pl - 11),
        ("b", pl - 10, 3 * pl - 11),
        ("b", 3 * pl - 10, 5 * pl - 11),
        ("b", 5 * pl - 10, 5 * pl - 1),  # the short last piece
    ]
    assert all(r.length <= 2 * pl for r in reqs)


@st.composite
def plans(draw: st.DrawFn) -> tuple[Metainfo, list[int], int]:
    pl = draw(st.sampled_from([16 * KIB, 32 * KIB, 64 * KIB]))
    items: list[tuple[str | None, int]] = []
    for i in range(draw(st.integers(1, 6))):
        items.append((f"d/f{i}", draw(st.integers(0, 5 * pl))))
        if draw(st.booleans()):
            items.append((None, draw(st.integers(1, pl - 1))))
    if not any(n for p, n in items if p):
        items.append(("last", 1))
    meta = layout(pl, items)
    pieces = draw(st.lists(st.integers(0, meta.num_pieces - 1), max_size=40))
    max_request = draw(st.integers(1, 6 * pl))
    return meta, pieces, max_request


@given(plans())
@settings(max_examples=300, deadline=None)
def test_plan_covers_exactly_the_data_bytes_of_the_wanted_pieces(
    case: tuple[Metainfo, list[int], int],
) -> None:
    meta, pieces, max_request = case
    reqs = plan_requests(meta, pieces, "http://h/", max_request)
    got: dict[int, list[tuple[int, int]]] = {}
    for r in reqs:
        assert 0 < r.length <= max_request
        assert 0 <= r.start <= r.end < r.file_length
        assert sum(s.length for s in r.segments) == r.length
        for s in r.segments:
            got.setdefault(s.piece, []).append((s.offset, s.offset + s.length))
    assert set(got) <= set(pieces)
    pl = meta.piece_length
    for p in set(pieces):
        want = []
        for f in meta.files:
            a, b = max(f.offset, p * pl), min(f.end, p * pl + meta.piece_size(p))
            if not f.pad and a < b:
                want.append((a - p * pl, b - p * pl))
        # pieces complete in order: segments sorted, disjoint, adjacent ones merged
        assert _merge(got.get(p, [])) == _merge(want)
        assert got.get(p, []) == sorted(got.get(p, []))
    order = [s.piece for r in reqs for s in r.segments]
    assert order == sorted(order)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


# -- fetching from a loopback HTTP server ----------------------------------------------------


@dataclass
class Served:
    base: str
    #: (decoded path, Range header) per request
    log: list[tuple[str, str | None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def static_server(
    root: Path, *, hub: bool = False, limiter: OriginLimiter | None = None
) -> AsyncIterator[Served]:
    """Static files under ``root``, counting requests: aiohttp's ``web.static`` (single
    ranges), or with ``hub=True`` the hub's own origin (what our web seeds really meet)."""
    served = Served("")

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        served.log.append((request.path, request.headers.get("Range")))
        return await handler(request)

    if hub:
        app = make_static_app(root, limiter=limiter)
        app.middlewares.insert(0, count)
    else:
        app = web.Application(middlewares=[count])
        app.router.add_static("/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        served.base = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        yield served
    finally:
        await runner.cleanup()


Behaviour = Callable[
    ["RawServer", asyncio.StreamReader, asyncio.StreamWriter, str, tuple[int, int] | None],
    Awaitable[None],
]


class RawServer:
    """A hand-written HTTP/1.1 server for the misbehaving cases (drops, lies, stalls)."""

    def __init__(self, files: dict[str, bytes], behaviour: Behaviour) -> None:
        self.files = files
        self.behaviour = behaviour
        self.log: list[tuple[str, str | None]] = []
        #: headers of the latest request, names lower-cased
        self.last_headers: dict[str, str] = {}
        self.gate = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.base = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.gate.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = unquote(urlsplit(lines[0].split(" ")[1]).path)
                self.last_headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)
                }
                rng = self.last_headers.get("range")
                self.log.append((path, rng))
                span = None
                if rng is not None:
                    a, b = rng.removeprefix("bytes=").split("-")
                    span = (int(a), int(b))
                await self.behaviour(self, reader, writer, path, span)
                await writer.drain()
                if writer.is_closing():
                    return
        finally:
            writer.close()

    @staticmethod
    def head(status: str, headers: dict[str, str | int]) -> bytes:
        text = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (text + "\r\n").encode()

    def partial(self, path: str, span: tuple[int, int], body: bytes | None = None) -> bytes:
        data = self.files[path]
        a, b = span
        body = data[a : b + 1] if body is None else body
        return (
            self.head(
                "206 Partial Content",
                {"Content-Range": f"bytes {a}-{b}/{len(data)}", "Content-Length": len(body)},
            )
            + body
        )


def one_file(tmp_path: Path, seed: int, pieces: int, pl: int) -> tuple[bytes, Metainfo]:
    """www/f.bin of ``pieces`` random pieces and its v1 torrent."""
    data = random.Random(seed).randbytes(pieces * pl)
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.bin").write_bytes(data)
    return data, create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=pl)


def make_tree(root: Path, spec: dict[str, int], seed: int = 7) -> Path:
    rng = random.Random(seed)
    for rel, size in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


async def fetch_all(ws: WebSeed, pieces: list[int]) -> dict[int, bytearray]:
    out: dict[int, bytearray] = {}
    async with contextlib.aclosing(ws.fetch(pieces)) as it:
        async for index, data in it:
            assert index not in out
            out[index] = data
    return out


MULTI = {
    "odd names/a b.bin": 70_000,
    "odd names/é#?.bin": 20_000,
    "odd names/empty": 0,
    "odd names/sub/100%+.bin": 3 * 64 * KIB + 5,
    "odd names/z.bin": 64 * KIB,
}


@pytest.mark.parametrize("version", list(TorrentVersion), ids=lambda v: v.value)
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("hub", [False, True], ids=["web.static", "hub-origin"])
async def test_fetch_yields_verified_pieces_for_every_torrent_kind(
    tmp_path: Path, version: TorrentVersion, multi: bool, hub: bool
) -> None:
    root = tmp_path / "www"
    if multi:
        make_tree(root, MULTI)
        meta = create_torrent(root / "odd names", version=version, piece_length=64 * KIB)
    else:
        make_tree(root, {"one file #1.bin": 5 * 64 * KIB + 123})
        meta = create_torrent(root / "one file #1.bin", version=version, piece_length=64 * KIB)
    if version is not TorrentVersion.V1 and multi:
        assert any(f.pad for f in meta.files)  # pads are exercised
    verifier = PieceVerifier(meta)
    async with static_server(root, hub=hub) as srv, HttpClient() as http:
        ws = WebSeed(srv.base, meta, http, max_request=4 * MIB)
        got = await fetch_all(ws, list(range(meta.num_pieces)))
        assert sorted(got) == list(range(meta.num_pieces))
        assert all(verifier.check(i, data) for i, data in got.items())
        data_files = [f for f in meta.files if not f.pad and f.length]
        assert ws.requests == len(srv.log) == len(data_files)
        assert ws.bytes_downloaded == meta.data_length
        assert ws.failures == 0 and ws.last_error is None
        assert all(not path.split("/")[-1].startswith(".pad") for path, _ in srv.log)

        # a scattered subset: only those pieces, still verified
        some = [meta.num_pieces - 1, 0, 2] if meta.num_pieces > 2 else [0]
        got = await fetch_all(ws, some)
        assert sorted(got) == sorted(set(some))
        assert all(verifier.check(i, data) for i, data in got.items())


async def test_eight_mib_in_64_kib_pieces_takes_two_4_mib_requests(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "www", {"big.bin": 8 * MIB})
    meta = create_torrent(root / "big.bin", version=TorrentVersion.V1, piece_length=64 * KIB)
    verifier = PieceVerifier(meta)
    async with static_server(root) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "big.bin", meta, http, max_request=4 * MIB)
        got = await fetch_all(ws, list(range(meta.num_pieces)))
    assert len(got) == 128 and all(verifier.check(i, d) for i, d in got.items())
    assert srv.log == [
        ("/big.bin", f"bytes=0-{4 * MIB - 1}"),
        ("/big.bin", f"bytes={4 * MIB}-{8 * MIB - 1}"),
    ]
    assert ws.requests == 2 and ws.bytes_downloaded == 8 * MIB


@pytest.mark.parametrize("version", list(TorrentVersion), ids=lambda v: v.value)
async def test_runs_hold_adjacent_pieces_in_page_aligned_buffers_pads_zeroed(
    tmp_path: Path, version: TorrentVersion
) -> None:
    """fetch_runs: every wanted piece once, in runs of adjacent pieces of at most
    run_bytes (a gap ends a run), each buffer page-aligned for a direct write; a recycled
    buffer carries over no bytes into a run that has pads (they must read as zeros)."""
    import mmap

    root = tmp_path / "www"
    make_tree(root, MULTI)
    meta = create_torrent(root / "odd names", version=version, piece_length=16 * KIB)
    verifier = PieceVerifier(meta)
    n = meta.num_pieces
    wanted = [i for i in range(n) if i != 5]
    async with static_server(root) as srv, HttpClient() as http:
        ws = WebSeed(srv.base, meta, http, max_request=4 * MIB)
        for _ in range(2):  # the second time on recycled buffers
            runs = []
            async with contextlib.aclosing(ws.fetch_runs(wanted, 64 * KIB)) as it:
                async for run in it:
                    runs.append((run.first, run.pieces))
                    assert isinstance(run.buf, mmap.mmap) and 1 <= run.pieces <= 4
                    pl = meta.piece_length
                    sizes = [meta.piece_size(run.first + k) for k in range(run.pieces)]
                    assert len(run.buf) == sum(sizes)
                    view = memoryview(run.buf)
                    assert all(verifier.check(run.first + k, view[k * pl : k * pl + sizes[k]])
                               for k in range(run.pieces))
                    del view
                    ws.recycle(run.buf)
            covered = sorted(run[0] + k for run in runs for k in range(run[1]))
            assert covered == wanted
            assert not any(f <= 5 < f + c for f, c in runs)  # the gap ends a run


async def first_piece_then_gate(srv: RawServer, w: asyncio.StreamWriter, path: str,
                                span: tuple[int, int], pl: int) -> None:
    """Reply with the headers and the first ``pl`` bytes of the body (its first piece),
    the rest once ``srv.gate`` is set."""
    whole = srv.partial(path, span)
    cut = len(whole) - (span[1] - span[0] + 1) + pl  # headers + the first piece
    w.write(whole[:cut])
    await w.drain()
    await srv.gate.wait()
    w.write(whole[cut:])


def gated_after(nbytes: int) -> Behaviour:
    """A server behaviour: every reply sends ``nbytes`` of its body, the rest at the gate."""
    async def gated(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                    path: str, span: tuple[int, int] | None) -> None:
        assert span is not None
        await first_piece_then_gate(srv, w, path, span, nbytes)
    return gated


async def test_pieces_are_yielded_while_the_response_is_still_streaming(tmp_path: Path) -> None:
    """The first piece arrives although the server holds back the rest of the 4 MiB range."""
    pl = 64 * KIB
    data, meta = one_file(tmp_path, 3, 64, pl)
    async with RawServer({"/f.bin": data}, gated_after(pl)) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, max_request=4 * MIB)
        async with contextlib.aclosing(ws.fetch(range(64))) as it:
            first = await asyncio.wait_for(anext(it), 5)
            assert first[0] == 0 and first[1] == data[:pl]
            assert len(srv.log) == 1  # one request, still open
            srv.gate.set()
            rest = [item async for item in it]
    assert [i for i, _ in rest] == list(range(1, 64))
    assert b"".join(d for _, d in rest) == data[pl:]


async def test_the_next_range_goes_out_while_the_previous_body_streams(tmp_path: Path) -> None:
    """Two requests (a gap in the pieces): the second is sent on a second connection while
    the first body is held back, so its reply waits in the socket (no round trip between
    requests); a busy reply to that early request is asked again once the first is done,
    and is no failure."""
    pl = 64 * KIB
    data, meta = one_file(tmp_path, 5, 8, pl)
    busy_once = [True]
    early = asyncio.Event()  # the second range's request reached the server

    async def held(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        if span[0] == 0:
            await first_piece_then_gate(srv, w, path, span, pl)
        elif busy_once[0]:
            busy_once[0] = False
            early.set()
            body = b'{"error": "one transfer at a time"}'
            w.write(srv.head("503 Service Unavailable",
                             {"Retry-After": 30, "Content-Length": len(body)}) + body)
        else:
            w.write(srv.partial(path, span))

    async with RawServer({"/f.bin": data}, held) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, max_request=4 * MIB)
        wanted = [0, 1, 2, 3, 5, 6, 7]  # two ranges: 0-3 and 5-7
        async with contextlib.aclosing(ws.fetch(wanted)) as it:
            assert (await asyncio.wait_for(anext(it), 5))[0] == 0
            await asyncio.wait_for(early.wait(), 30)  # sent while the first body is held
            assert [rng for _, rng in srv.log] == [f"bytes=0-{4 * pl - 1}",
                                                   f"bytes={5 * pl}-{8 * pl - 1}"]
            srv.gate.set()
            rest = [item async for item in it]
    assert [i for i, _ in rest] == [1, 2, 3, 5, 6, 7]
    assert all(bytes(d) == data[i * pl:(i + 1) * pl] for i, d in rest)
    assert len(srv.log) == 3 and srv.log[2] == srv.log[1]  # asked again after the 503
    assert ws.failures == 0 and ws.requests == 3 and not ws.banned


async def test_a_stopped_fetch_ends_with_the_whole_pieces_it_holds_and_drops_the_rest(
        tmp_path: Path) -> None:
    """``stop`` is asked after every read: once True, the fetch yields the whole pieces of
    the run under way (a shorter run, here 2 of 16) and ends without an error, its
    connection dropped: the server never has to send the rest (here it holds it back for
    good, so a fetch that did not stop would wait for it until the timeout)."""
    pl = 64 * KIB
    data, meta = one_file(tmp_path, 4, 16, pl)
    part = 2 * pl + pl // 2  # 2.5 pieces, then nothing until the gate (never set)
    async with RawServer({"/f.bin": data}, gated_after(part)) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, max_request=4 * MIB)

        async def runs() -> list[tuple[int, int, bytes]]:
            out = []
            async with contextlib.aclosing(ws.fetch_runs(
                    range(16), 16 * pl, lambda: ws.bytes_downloaded >= part)) as it:
                async for run in it:
                    out.append((run.first, run.pieces, bytes(run.buf[:run.pieces * pl])))
            return out

        got = await asyncio.wait_for(runs(), 10)
    assert got == [(0, 2, data[:2 * pl])]
    assert ws.failures == 0 and ws.requests == 1 and not ws.banned


async def test_stopping_early_lets_a_reply_asked_ahead_go(tmp_path: Path) -> None:
    """Closing a fetch after its first piece drops the reply already asked for ahead;
    the next fetch on the same web seed still gets every piece it asks for."""
    root = make_tree(tmp_path / "www", {"f.bin": 16 * 64 * KIB})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=64 * KIB)
    verifier = PieceVerifier(meta)
    async with static_server(root) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, max_request=2 * 64 * KIB)
        async with contextlib.aclosing(ws.fetch(range(16))) as it:
            first = await asyncio.wait_for(anext(it), 5)
        assert first[0] == 0 and verifier.check(0, first[1])
        got = await fetch_all(ws, list(range(16)))
    assert sorted(got) == list(range(16)) and all(verifier.check(i, d) for i, d in got.items())
    assert ws.failures == 0


async def test_garbage_fails_verification_and_three_strikes_ban_the_web_seed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path / "www", {"f.bin": 8 * 16 * KIB})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.HYBRID, piece_length=16 * KIB)
    data = (root / "f.bin").read_bytes()

    async def garbage(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        w.write(srv.partial(path, span, os.urandom(span[1] - span[0] + 1)))

    verifier = PieceVerifier(meta)
    async with RawServer({"/f.bin": data}, garbage) as srv, HttpClient() as http:
        url = srv.base + "f.bin"
        ws = WebSeed(url, meta, http, max_request=16 * KIB)  # one request per piece
        checked = []
        with pytest.raises(WebSeedError, match="disabled"):
            async with contextlib.aclosing(ws.fetch(range(8))) as it:
                async for index, piece in it:
                    ok = verifier.check(index, piece)
                    checked.append(ok)
                    if not ok:
                        ws.strike(index)
        assert checked == [False, False, False]
        assert ws.banned and ws.strikes == 3
        assert len(srv.log) == 3  # nothing asked after the ban
        assert any(url in r.getMessage() and "disabled" in r.getMessage() for r in caplog.records)
        with pytest.raises(WebSeedError, match="disabled"):
            await fetch_all(ws, [5])
        assert len(srv.log) == 3


async def test_503_with_retry_after_raises_busy_with_the_delay(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "www", {"f.bin": 50_000})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=16 * KIB)

    async def busy(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        body = b'{"error": "overloaded"}'
        w.write(
            srv.head("503 Service Unavailable", {"Retry-After": 7, "Content-Length": len(body)})
            + body
        )

    async with RawServer({}, busy) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http)
        with pytest.raises(WebSeedBusy) as info:
            await fetch_all(ws, [0, 1])
    assert info.value.retry_after == 7.0
    assert srv.base + "f.bin" in str(info.value)
    assert ws.failures == 1 and ws.last_error is not None and "503" in ws.last_error
    assert not ws.banned  # BEP 19: a busy server is not discarded


async def test_overloaded_hub_origin_makes_the_web_seed_busy_not_banned(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "www", {"f.bin": 4 * 16 * KIB})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=16 * KIB)
    limiter = OriginLimiter(max_transfers=1, retry_after=12, range_overflow=1)
    async with (
        static_server(root, hub=True, limiter=limiter) as srv,
        HttpClient() as http,
    ):
        ws = WebSeed(srv.base + "f.bin", meta, http)
        assert limiter.admit(whole_file=True)  # someone else holds the only slot
        with pytest.raises(WebSeedBusy) as info:
            await fetch_all(ws, [0, 1, 2, 3])
        assert info.value.retry_after == 12.0 and not ws.banned
        limiter.release()  # the hub has room again: the same web seed goes on
        got = await fetch_all(ws, [0, 1, 2, 3])
    verifier = PieceVerifier(meta)
    assert sorted(got) == [0, 1, 2, 3] and all(verifier.check(i, d) for i, d in got.items())
    assert limiter.rejected_total == 1 and ws.requests == 2


async def test_many_ranges_share_keep_alive_connections(tmp_path: Path) -> None:
    """One range per piece: the requests reuse their connections (one streaming, one
    asked ahead), not one connection per range."""
    root = make_tree(tmp_path / "www", {"f.bin": 12 * 16 * KIB})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=16 * KIB)
    async with static_server(root) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, max_request=16 * KIB)
        got = await fetch_all(ws, range(12))
        assert b"".join(got[i] for i in range(12)) == (root / "f.bin").read_bytes()
        assert ws.requests == 12 and 1 <= http.connections_made <= 2


async def test_connection_dropped_mid_body_raises_after_intact_pieces(tmp_path: Path) -> None:
    pl = 16 * KIB
    root = make_tree(tmp_path / "www", {"f.bin": 10 * pl})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=pl)
    data = (root / "f.bin").read_bytes()

    async def drop(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        whole = srv.partial(path, span)
        w.write(whole[: len(whole) - (span[1] - span[0] + 1) + 3 * pl + 500])
        await w.drain()
        w.close()

    verifier = PieceVerifier(meta)
    async with RawServer({"/f.bin": data}, drop) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http)
        got: dict[int, bytearray] = {}
        with pytest.raises(WebSeedError) as info:
            async for index, piece in ws.fetch(range(10)):
                got[index] = piece
    assert sorted(got) == [0, 1, 2]
    assert all(verifier.check(i, d) for i, d in got.items())
    assert "f.bin" in str(info.value) and ws.failures == 1


async def test_server_ignoring_range_is_used_from_offset_zero_only(tmp_path: Path) -> None:
    pl = 16 * KIB
    root = make_tree(tmp_path / "www", {"f.bin": 10 * pl})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=pl)
    data = (root / "f.bin").read_bytes()

    async def whole(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        w.write(srv.head("200 OK", {"Content-Length": len(data)}) + data)

    verifier = PieceVerifier(meta)
    async with RawServer({"/f.bin": data}, whole) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, max_request=4 * pl)
        got: dict[int, bytearray] = {}
        with pytest.raises(WebSeedError, match="ignores Range"):
            async for index, piece in ws.fetch(range(10)):
                got[index] = piece
        # the first request started at 0: its four pieces were taken from the 200 body
        assert sorted(got) == [0, 1, 2, 3]
        assert all(verifier.check(i, d) for i, d in got.items())
        assert ws.bytes_downloaded == 4 * pl
        assert len(srv.log) == 2


async def test_wrong_content_range_and_other_file_size_are_errors(tmp_path: Path) -> None:
    pl = 16 * KIB
    root = make_tree(tmp_path / "www", {"f.bin": 4 * pl})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=pl)
    data = (root / "f.bin").read_bytes()

    async def shifted(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        a, b = span[0] + 1, span[1] + 1
        w.write(
            srv.head(
                "206 Partial Content",
                {"Content-Range": f"bytes {a}-{b}/{len(data)}", "Content-Length": b - a + 1},
            )
            + data[a : b + 1]
        )

    async def other_size(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        a, b = span
        w.write(
            srv.head(
                "206 Partial Content",
                {"Content-Range": f"bytes {a}-{b}/{len(data) + 1}", "Content-Length": b - a + 1},
            )
            + data[a : b + 1]
        )

    async def missing(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        w.write(srv.head("404 Not Found", {"Content-Length": 0}))

    cases = [
        (shifted, "got Content-Range"),
        (other_size, "different version"),
        (missing, "HTTP 404"),
    ]
    async with HttpClient() as http:
        for behaviour, message in cases:
            async with RawServer({"/f.bin": data}, behaviour) as srv:
                ws = WebSeed(srv.base + "f.bin", meta, http)
                with pytest.raises(WebSeedError, match=message):
                    await fetch_all(ws, [1, 2])
                assert ws.failures == 1 and ws.last_error and message in ws.last_error


async def test_a_silent_server_times_out(tmp_path: Path) -> None:
    pl = 16 * KIB
    root = make_tree(tmp_path / "www", {"f.bin": 4 * pl})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=pl)
    data = (root / "f.bin").read_bytes()

    async def stall(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        whole = srv.partial(path, span)
        w.write(whole[: len(whole) - 100])  # all but the last 100 bytes, then silence
        await w.drain()
        await srv.gate.wait()

    async with RawServer({"/f.bin": data}, stall) as srv, HttpClient() as http:
        # The server stays silent until the test ends, so only the client's own read timer
        # can end the fetch; the timer asked of the client is recorded (the outer deadline
        # only guards against a hang, it measures nothing).
        read_timeouts: list[float | None] = []
        get = http.get

        def recording_get(*args: Any, **kwargs: Any) -> Any:
            read_timeouts.append(kwargs["timeout"])
            return get(*args, **kwargs)

        http.get = recording_get  # type: ignore[method-assign]
        ws = WebSeed(srv.base + "f.bin", meta, http, timeout=0.5)
        got: dict[int, bytearray] = {}

        async def fetch() -> None:
            async for index, piece in ws.fetch(range(4)):
                got[index] = piece

        with pytest.raises(WebSeedError, match="timed out"):
            await asyncio.wait_for(fetch(), 30)
        assert read_timeouts == [0.5]
        assert not srv.gate.is_set()  # the server never ended the request
        assert sorted(got) == [0, 1, 2]


async def test_extra_headers_reach_the_server_for_private_collections(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "www", {"f.bin": 2 * 16 * KIB})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=16 * KIB)
    data = (root / "f.bin").read_bytes()
    seen: list[str | None] = []

    async def auth(
        srv: RawServer,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        path: str,
        span: tuple[int, int] | None,
    ) -> None:
        assert span is not None
        seen.append(srv.last_headers.get("authorization"))
        if srv.last_headers.get("authorization") != "Bearer T":
            w.write(srv.head("401 Unauthorized", {"Content-Length": 0}))
        else:
            w.write(srv.partial(path, span))

    async with RawServer({"/f.bin": data}, auth) as srv, HttpClient() as http:
        with pytest.raises(WebSeedError, match="HTTP 401"):
            await fetch_all(WebSeed(srv.base + "f.bin", meta, http), [0])
        ws = WebSeed(srv.base + "f.bin", meta, http, headers={"Authorization": "Bearer T"})
        got = await fetch_all(ws, [0, 1])
    assert seen == [None, "Bearer T"]
    assert b"".join(got[i] for i in (0, 1)) == data


async def test_connection_refused_is_a_web_seed_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "www", {"f.bin": 20_000})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=16 * KIB)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with HttpClient() as http:
        ws = WebSeed(f"http://127.0.0.1:{port}/f.bin", meta, http, timeout=2)
        with pytest.raises(WebSeedError, match=f"127.0.0.1:{port}"):
            await fetch_all(ws, [0])
    assert ws.failures == 1


class _VirtualRate(RateLimiter):
    """A rate limiter on a virtual clock: a wait advances the clock instead of sleeping."""

    def __init__(self, rate: float, burst: float) -> None:
        self.now = 0.0
        self.granted = 0
        super().__init__(rate, burst=burst, clock=lambda: self.now)

    async def acquire(self, n: int) -> None:
        self.granted += n
        self.now += self.charge(n)


async def test_rate_limiter_paces_the_download(tmp_path: Path) -> None:
    """Every byte read is charged to the limiter, and 1 MiB at 2 MiB/s less the burst is
    then 0.47 clock seconds (virtual time: the machine's load does not enter)."""
    root = make_tree(tmp_path / "www", {"f.bin": 1 * MIB})
    meta = create_torrent(root / "f.bin", version=TorrentVersion.V1, piece_length=64 * KIB)
    limiter = _VirtualRate(2 * MIB, burst=64 * KIB)
    async with static_server(root) as srv, HttpClient() as http:
        ws = WebSeed(srv.base + "f.bin", meta, http, rate_limiter=limiter)
        got = await fetch_all(ws, list(range(16)))
    assert len(got) == 16
    assert limiter.granted == 1 * MIB
    assert limiter.now == pytest.approx((1 * MIB - 64 * KIB) / (2 * MIB))
