"""BEP 19 (GetRight-style) web seeds: pieces fetched from a plain HTTP server.

A web seed is an ordinary file server holding the torrent's files under the layout of
BEP 19: for a single-file torrent the URL is the file itself (a URL ending in ``/`` gets
the torrent's name appended); for a multi-file torrent the URL is a folder below which
``name/path/to/file`` is found, each component percent-encoded. Pad files (BEP 47) are
never fetched: their zeros are filled in locally.

Server operators dislike floods of tiny range requests (BEP 19 warns about it, and users
of other clients complain), so :func:`plan_requests` joins runs of adjacent pieces into
few large ``Range: bytes=a-b`` requests of at most ``max_request`` bytes, one per file a
run touches. :class:`WebSeed` streams each response and yields every piece (or every run
of adjacent pieces, :meth:`WebSeed.fetch_runs`) as soon as its last byte arrived; memory
stays at about one piece (one run); a body is read from the socket straight into the
run's buffer (:meth:`~swarmhub.discovery.httpget.Response.readinto`).

The web seed does not verify pieces: the caller hashes each yielded piece (with
:class:`~swarmhub.storage.verify.PieceVerifier`, in a thread) and calls
:meth:`WebSeed.strike` when one fails; after ``max_strikes`` failures the web seed is
disabled for good.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import mmap
import re
import time
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote

from swarmhub.discovery.httpget import HttpClient, HttpError, Response
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import FileEntry, Metainfo

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "RangeRequest",
    "Run",
    "Segment",
    "WebSeed",
    "WebSeedBusy",
    "WebSeedError",
    "file_url",
    "plan_requests",
]

log = logging.getLogger(__name__)

#: Seconds to wait after a 503/429 that carries no (usable) Retry-After header.
DEFAULT_RETRY_AFTER = 30.0
#: Retry-After values above this are clamped (a broken header must not park us for days).
_MAX_RETRY_AFTER = 3600.0

#: The next range request goes out when the current body should end within this many
#: seconds (at its rate so far): soon enough to hide a round trip, late enough that a slow
#: server's second reply does not sit unread for long (a hub drops a stalled transfer).
_AHEAD_SECONDS = 0.5
#: Run buffers kept for reuse by :meth:`WebSeed.recycle` (the runs hashing and writing at
#: once, plus one arriving: the web seed driver keeps 8 MiB of 1 MiB runs in flight).
_SPARE_RUNS = 10

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class WebSeedError(SwarmhubError):
    """A web seed request failed (HTTP status, wrong range, short body, network, timeout)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"web seed {url}: {problem}")
        self.url = url
        self.problem = problem


class WebSeedBusy(WebSeedError):
    """The server is overloaded (503/429); try again after ``retry_after`` seconds.

    BEP 19: a busy reply is no reason to discard the web seed.
    """

    def __init__(self, url: str, problem: str, retry_after: float) -> None:
        super().__init__(url, problem)
        self.retry_after = retry_after


class Segment(NamedTuple):
    """A run of bytes of one piece that one request fills."""

    piece: int
    #: Offset inside the piece.
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """One HTTP GET with ``Range: bytes=start-end`` on one file of the torrent."""

    url: str
    #: First byte, as an offset into the file.
    start: int
    #: Last byte (inclusive, as HTTP ranges are).
    end: int
    #: The piece bytes this request fills, in order; their lengths add up to ``length``.
    segments: tuple[Segment, ...]
    #: Size of the whole file, to recognise a server holding a different version of it.
    file_length: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def range_header(self) -> str:
        return f"bytes={self.start}-{self.end}"


def file_url(meta: Metainfo, base_url: str, entry: FileEntry) -> str:
    """The URL of one file of ``meta`` on the web seed ``base_url`` (BEP 19 layout).

    A single-file torrent's URL names the file itself unless it ends with ``/``. A
    multi-file torrent's URL is a folder; like libtorrent we add the missing ``/`` to a
    multi-file URL rather than fetch the folder as if it were a file.
    """
    if meta.single_file:
        if base_url.endswith("/"):
            return base_url + quote(meta.name, safe="")
        return base_url
    if not base_url.endswith("/"):
        base_url += "/"
    return base_url + "/".join(quote(c, safe="") for c in (meta.name, *entry.path))


def _runs(pieces: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive indices in a sorted, duplicate-free list."""
    if not pieces:
        return
    first = last = pieces[0]
    for i in pieces[1:]:
        if i != last + 1:
            yield first, last
            first = i
        last = i
    yield first, last


def _segments(a: int, b: int, piece_length: int) -> tuple[Segment, ...]:
    """The pieces covering piece-space bytes [a, b), cut at piece boundaries."""
    out = []
    pos = a
    while pos < b:
        piece, off = divmod(pos, piece_length)
        n = min(b - pos, piece_length - off)
        out.append(Segment(piece, off, n))
        pos += n
    return tuple(out)


def plan_requests(
    meta: Metainfo, pieces: Sequence[int], base_url: str, max_request: int
) -> list[RangeRequest]:
    """Plan the HTTP range requests that fetch ``pieces`` from the web seed ``base_url``.

    Pieces are sorted and deduplicated; each run of adjacent pieces is cut into chunks of
    at most ``max_request`` bytes (on piece boundaries when ``max_request`` holds at least
    one piece), and each chunk becomes one request per data file it touches. Pads and
    empty files make no request. The result is in piece-space order, so the pieces
    complete in ascending order when the requests are run one after the other.
    """
    if max_request < 1:
        raise ValueError(f"max_request must be positive, got {max_request}")
    n = meta.num_pieces
    wanted = sorted(set(pieces))
    if wanted and (wanted[0] < 0 or wanted[-1] >= n):
        raise IndexError(f"piece index out of range 0..{n - 1}: {wanted[0]}..{wanted[-1]}")
    pl = meta.piece_length
    step = (max_request // pl) * pl if max_request >= pl else max_request
    data = [f for f in meta.files if not f.pad and f.length > 0]
    starts = [f.offset for f in data]
    urls: dict[int, str] = {}
    out: list[RangeRequest] = []
    for first, last in _runs(wanted):
        lo, hi = first * pl, min((last + 1) * pl, meta.total_length)
        for c0 in range(lo, hi, step):
            c1 = min(c0 + step, hi)
            k = max(0, bisect.bisect_right(starts, c0) - 1)
            while k < len(data) and data[k].offset < c1:
                f = data[k]
                a, b = max(c0, f.offset), min(c1, f.end)
                if a < b:
                    url = urls.get(k)
                    if url is None:
                        url = urls[k] = file_url(meta, base_url, f)
                    out.append(
                        RangeRequest(
                            url, a - f.offset, b - f.offset - 1, _segments(a, b, pl), f.length
                        )
                    )
                k += 1
    return out


def _release_reply(fut: asyncio.Future[tuple[Response, bool]]) -> None:
    """Drop a reply that was asked for ahead and not read (its error, if it failed,
    was recorded by :meth:`WebSeed._open`)."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result()[0].close()


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    # imported here: the email package cost ~10 ms of every hybrid get's start-up (the
    # web seed's module is loaded by each one), for a header a busy server rarely sends
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:
        return DEFAULT_RETRY_AFTER
    return min(max(0.0, when.timestamp() - time.time()), _MAX_RETRY_AFTER)


class Run(NamedTuple):
    """Consecutive pieces ``first .. first + pieces - 1`` in one buffer, back to back."""

    first: int
    pieces: int
    #: ``bytearray`` for single pieces (:meth:`WebSeed.fetch`), else page-aligned memory
    #: that direct writes take as it is (:meth:`WebSeed.fetch_runs`).
    buf: bytearray | mmap.mmap


class _Assembler:
    """Hands out the buffer of the run of pieces the next body bytes belong to, for the
    socket to be read into (:meth:`window`, then :meth:`filled`).

    Requests run in piece-space order, so the bytes of a run arrive in order and a run is
    complete when it has received all the bytes the plan assigned to its pieces; pad ranges
    are simply never written, so they stay zero (a recycled buffer is only handed to a run
    without pads). A run is a window of piece space (its pieces back to back), so a body
    is read in one go per run it touches (an aiohttp client copied each network chunk into
    place: one more copy per byte).
    """

    __slots__ = ("_buf", "_end", "_first", "_got", "_meta", "_new", "_pl", "_run", "_runs")

    def __init__(self, meta: Metainfo, runs: dict[int, tuple[int, int, int]],
                 new: Callable[[int, bool], bytearray | mmap.mmap]) -> None:
        self._meta = meta
        self._pl = meta.piece_length
        #: piece -> (first piece of its run, pieces in the run, bytes the plan fills)
        self._runs = runs
        self._new = new
        self._run: tuple[int, int, int] | None = None
        self._first = self._end = -1  # the current run's window of piece space
        self._buf: bytearray | mmap.mmap = bytearray()
        self._got = 0

    def window(self, pos: int) -> memoryview:
        """Where the bytes from piece-space offset ``pos`` on go (``pos`` inside pieces the
        plan fills): the buffer of its run, from there to the run's end."""
        run = self._run
        if run is None or not self._first <= pos < self._end:
            pl = self._pl
            run = self._runs[pos // pl]
            first, count, need = run
            size = self._meta.piece_size(first + count - 1) + (count - 1) * pl
            self._run, self._got = run, 0
            self._first, self._end = first * pl, first * pl + size
            self._buf = self._new(size, need < size)
        return memoryview(self._buf)[pos - self._first:]

    def filled(self, n: int) -> Run | None:
        """``n`` bytes were written at the start of the last :meth:`window`; the run they
        complete, if they do."""
        run = self._run
        assert run is not None
        self._got += n
        if self._got < run[2]:
            return None
        done = Run(run[0], run[1], self._buf)
        self._run, self._buf, self._first, self._end = None, bytearray(), -1, -1
        return done

    def cut(self) -> Run | None:
        """The whole pieces the current run holds so far, as a shorter run (its buffer),
        when the rest will not come (:meth:`WebSeed.fetch_runs` ``stop``). Bytes arrive in
        order, so these are its first pieces; a run with pads is given up whole (its
        pieces' bytes are not where the count says)."""
        run, got = self._run, self._got
        self._run, self._first, self._end = None, -1, -1
        if run is None:
            return None
        first, count, need = run
        size = self._meta.piece_size(first + count - 1) + (count - 1) * self._pl
        whole = min(count, got // self._pl) if need == size else 0
        buf, self._buf = self._buf, bytearray()
        return Run(first, whole, buf) if whole else None


class WebSeed:
    """An HTTP web seed (BEP 19) for one torrent: fetches pieces with few large ranges.

    One :meth:`fetch` runs its requests one after the other on one connection; run
    several fetches (on disjoint pieces) for more parallelism. ``timeout`` bounds the
    connect and every read stall, not a whole transfer, so a slow but steady server is
    fine while a silent one fails.
    """

    def __init__(
        self,
        url: str,
        meta: Metainfo,
        http: HttpClient,
        *,
        max_request: int = 4 << 20,
        timeout: float = 30.0,
        rate_limiter: RateLimiter | None = None,
        max_strikes: int = 3,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_request < 1:
            raise ValueError(f"max_request must be positive, got {max_request}")
        self.url = url
        self.meta = meta
        self.http = http
        self.max_request = max_request
        self.rate_limiter = rate_limiter
        self.max_strikes = max_strikes
        #: Extra request headers, e.g. ``Authorization`` for a private hub collection.
        self.headers = dict(headers or {})
        self._timeout = timeout
        #: Payload bytes received (pads excluded; bytes of failed requests included).
        self.bytes_downloaded = 0
        #: HTTP requests sent.
        self.requests = 0
        #: Requests that failed (busy replies included).
        self.failures = 0
        self.last_error: str | None = None
        #: Pieces that failed verification, as reported by :meth:`strike`.
        self.strikes = 0
        self.banned = False
        self._spare: list[mmap.mmap] = []

    def __repr__(self) -> str:
        return f"WebSeed({self.url!r}, requests={self.requests}, banned={self.banned})"

    def strike(self, piece: int | None = None) -> bool:
        """Record a piece from this web seed that failed its hash check; True once banned.

        BEP 19 discards a web seed on the first bad piece; we allow ``max_strikes`` so a
        file replaced on the server mid-download does not cost the whole seed at once.
        """
        self.strikes += 1
        if not self.banned and self.strikes >= self.max_strikes:
            self.banned = True
            log.warning(
                "web seed %s disabled for good: %d pieces failed their hash check (last: %s)",
                self.url,
                self.strikes,
                piece,
            )
        return self.banned

    async def fetch(self, pieces: Sequence[int]) -> AsyncGenerator[tuple[int, bytearray], None]:
        """Yield ``(index, piece bytes)`` for ``pieces``, each as soon as it is complete.

        Each piece is a fresh buffer that the caller owns (pads included as zeros); it is
        a ``bytearray`` to spare a copy, and hashes and writes like ``bytes``. Pieces come
        in ascending order (pieces made only of padding first). On an error
        the pieces already yielded are intact and :class:`WebSeedError` (or
        :class:`WebSeedBusy`) is raised; the rest were not delivered. Close the iterator
        (``contextlib.aclosing``) when stopping early, so the connection is released.
        """
        def fresh(size: int, pads: bool) -> bytearray:
            return bytearray(size)

        async with contextlib.aclosing(self._fetch(pieces, 1, fresh)) as runs:
            async for run in runs:
                assert isinstance(run.buf, bytearray)
                yield run.first, run.buf

    async def fetch_runs(self, pieces: Sequence[int], run_bytes: int,
                         stop: Callable[[], bool] | None = None
                         ) -> AsyncGenerator[Run, None]:
        """Like :meth:`fetch`, in :class:`Run` s of up to ``run_bytes`` (at least one piece)
        of adjacent pieces in one page-aligned buffer: the caller hashes a run in one
        thread-pool call and writes it in one direct write, where one call per piece cost
        more than the hashing itself with small pieces (1,024 hops each way for 64 MiB in
        64 KiB pieces). Hand a run's buffer back with :meth:`recycle` once written.

        ``stop`` is asked after every read of a body: once it says True, the whole pieces
        of the run under way are yielded (a shorter run) and the fetch ends there, its
        connection dropped (the server stops sending), without an error."""
        per_run = max(1, run_bytes // self.meta.piece_length)
        async with contextlib.aclosing(
                self._fetch(pieces, per_run, self._run_buffer, stop)) as runs:
            async for run in runs:
                yield run

    def recycle(self, buf: bytearray | mmap.mmap) -> None:
        """Take back a run's buffer for a later run of the same size (a fresh one is
        mapped, zeroed and faulted in page by page: ~10 % of a loopback fetch's CPU)."""
        if isinstance(buf, mmap.mmap) and len(self._spare) < _SPARE_RUNS:
            self._spare.append(buf)

    def _run_buffer(self, size: int, pads: bool) -> mmap.mmap:
        if not pads:  # every byte will be written: a used buffer does
            for k, spare in enumerate(self._spare):
                if len(spare) == size:
                    return self._spare.pop(k)
        return mmap.mmap(-1, size)

    async def _fetch(self, pieces: Sequence[int], per_run: int,
                     new: Callable[[int, bool], bytearray | mmap.mmap],
                     stop: Callable[[], bool] | None = None
                     ) -> AsyncGenerator[Run, None]:
        if self.banned:
            raise WebSeedError(self.url, "disabled after pieces failed their hash check")
        meta = self.meta
        plan = plan_requests(meta, pieces, self.url, self.max_request)
        wanted = sorted(set(pieces))
        need = dict.fromkeys(wanted, 0)
        for req in plan:
            for seg in req.segments:
                need[seg.piece] += seg.length
        runs: dict[int, tuple[int, int, int]] = {}
        empty: list[tuple[int, int]] = []
        for first, last in _runs(wanted):
            for a in range(first, last + 1, per_run):
                b = min(a + per_run, last + 1)
                run = (a, b - a, sum(need[i] for i in range(a, b)))
                runs.update(dict.fromkeys(range(a, b), run))
                if run[2] == 0:
                    empty.append((a, b - a))
        for a, count in empty:  # made only of padding: nothing to fetch
            size = meta.piece_size(a + count - 1) + (count - 1) * meta.piece_length
            yield Run(a, count, new(size, True))
        asm = _Assembler(meta, runs, new)
        ahead: asyncio.Future[tuple[Response, bool]] | None = None
        try:
            for k, req in enumerate(plan):
                if self.banned:
                    raise WebSeedError(self.url, "disabled after pieces failed their hash check")
                reply = None
                if ahead is not None:
                    sent, ahead = ahead, None
                    with contextlib.suppress(WebSeedBusy):  # busy for two: ask on our own
                        reply = await sent
                if reply is None:
                    reply = await self._open(req)
                nxt = plan[k + 1] if k + 1 < len(plan) else None

                def send_next(nxt: RangeRequest | None = nxt) -> None:
                    nonlocal ahead
                    if nxt is not None and not self.banned:
                        ahead = asyncio.ensure_future(self._open(nxt, ahead=True))

                async with contextlib.aclosing(
                        self._run(req, reply, asm, send_next, stop)) as stream:
                    async for item in stream:
                        yield item
                if stop is not None and stop():
                    return  # _run cut the body short (or it had just ended): no more
        finally:
            if ahead is not None:  # sent early, never read: let its connection go
                ahead.add_done_callback(_release_reply)
                ahead.cancel()

    async def _open(self, req: RangeRequest, *, ahead: bool = False
                    ) -> tuple[Response, bool]:
        """Send ``req`` and check the reply's status and headers; the body is left to read.
        ``ahead``: sent while the previous body still streams, so a busy reply (a hub
        refusing a second transfer at once) is not yet a failure: the caller asks again."""
        self.requests += 1
        headers = {**self.headers, "Range": req.range_header, "Accept-Encoding": "identity"}
        log.debug("web seed GET %s %s", req.url, req.range_header)
        try:
            resp = await self.http.get(req.url, headers=headers, timeout=self._timeout)
            try:
                return resp, self._check(req, resp)
            except BaseException:
                resp.close()
                raise
        except WebSeedError as exc:
            if not (ahead and isinstance(exc, WebSeedBusy)):
                self._failed(exc)
            raise
        except (HttpError, TimeoutError, OSError) as exc:
            raise self._wrap(req, exc) from exc

    def _wrap(self, req: RangeRequest, exc: BaseException) -> WebSeedError:
        what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
        detail = str(exc)
        err = WebSeedError(req.url, f"{what}{': ' + detail if detail else ''} ({req.range_header})")
        self._failed(err)
        return err

    async def _run(self, req: RangeRequest, reply: tuple[Response, bool],
                   asm: _Assembler, send_next: Callable[[], None],
                   stop: Callable[[], bool] | None = None) -> AsyncGenerator[Run, None]:
        """Stream the body of ``req`` into the assembler, yielding each run it completes.
        ``send_next`` is called once the rest of this body should arrive within
        ``_AHEAD_SECONDS``: the next request then goes out on a second connection, and its
        reply waits in the socket instead of one round trip per request (many, when the
        peers' pieces cut the web seed's batch into short ranges)."""
        resp, whole = reply
        loop = asyncio.get_running_loop()
        started = loop.time()
        asked_next = False
        try:
            remaining = req.length
            # the request's bytes are one stretch of piece space, from its first segment on
            seg = req.segments[0]
            pos = seg.piece * self.meta.piece_length + seg.offset
            while remaining:  # bounded: each read fills some of a run, or the body ends
                # straight from the socket into the run's buffer; never past what we asked
                # for (a 200 with the whole file: the rest is dropped, not drained)
                with asm.window(pos) as into:
                    n = await resp.readinto(into[:remaining])
                if n == 0:
                    raise WebSeedError(
                        req.url,
                        f"body ended after {req.length - remaining} of {req.length} bytes "
                        f"({req.range_header})",
                    )
                remaining -= n
                self.bytes_downloaded += n
                pos += n
                if not asked_next:
                    got = req.length - remaining
                    if remaining * (loop.time() - started) <= got * _AHEAD_SECONDS:
                        asked_next = True
                        send_next()
                if (done := asm.filled(n)) is not None:
                    yield done
                if remaining and stop is not None and stop():
                    if (part := asm.cut()) is not None:
                        yield part
                    return  # the connection is dropped below: the rest is not wanted
                if self.rate_limiter is not None:
                    await self.rate_limiter.acquire(n)
            if whole:
                resp.close()  # drop the rest of the file rather than drain it
        except WebSeedError as exc:
            self._failed(exc)
            raise
        except (HttpError, TimeoutError, OSError) as exc:
            raise self._wrap(req, exc) from exc
        finally:
            resp.release()

    def _failed(self, exc: WebSeedError) -> None:
        self.failures += 1
        self.last_error = str(exc)
        log.debug("%s", exc)

    def _check(self, req: RangeRequest, resp: Response) -> bool:
        """Validate status and headers; True when the body is the whole file (a 200)."""
        status = resp.status
        if status in (503, 429):
            retry = _retry_after(resp.headers.get("retry-after"))
            raise WebSeedBusy(req.url, f"busy (HTTP {status}), retry after {retry:g} s", retry)
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise WebSeedError(req.url, f"unexpected Content-Encoding {encoding!r}")
        length = resp.content_length
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
            if m is None:
                raise WebSeedError(
                    req.url,
                    f"206 without a usable Content-Range "
                    f"({resp.headers.get('content-range')!r}) for {req.range_header}",
                )
            start, end, total = int(m[1]), int(m[2]), m[3]
            if total != "*" and int(total) != req.file_length:
                raise WebSeedError(
                    req.url,
                    f"the file on the server has {total} bytes, the torrent expects "
                    f"{req.file_length} (a different version of the file?)",
                )
            if (start, end) != (req.start, req.end):
                raise WebSeedError(
                    req.url, f"asked for {req.range_header}, got Content-Range bytes {start}-{end}"
                )
            if length is not None and length != req.length:
                raise WebSeedError(
                    req.url, f"Content-Length {length} does not match {req.range_header}"
                )
            return False
        if status == 200:
            if req.start != 0:
                raise WebSeedError(
                    req.url, f"the server ignores Range (200 instead of 206 for {req.range_header})"
                )
            if length is not None and length != req.file_length:
                raise WebSeedError(
                    req.url,
                    f"the file on the server has {length} bytes, the torrent expects "
                    f"{req.file_length} (a different version of the file?)",
                )
            return True
        reason = resp.reason or ""
        raise WebSeedError(req.url, f"HTTP {status} {reason}".rstrip() + f" for {req.range_header}")
