"""BEP 19 (GetRight-style) web seeds: pieces fetched from a plain HTTP server.

A web seed is an ordinary file server holding the torrent's files under the layout of
BEP 19: for a single-file torrent the URL is the file itself (a URL ending in ``/`` gets
the torrent's name appended); for a multi-file torrent the URL is a folder below which
``name/path/to/file`` is found, each component percent-encoded. Pad files (BEP 47) are
never fetched: their zeros are filled in locally.

Server operators dislike floods of tiny range requests (BEP 19 warns about it, and users
of other clients complain), so :func:`plan_requests` joins runs of adjacent pieces into
few large ``Range: bytes=a-b`` requests of at most ``max_request`` bytes, one per file a
run touches. :class:`WebSeed` streams each response and yields every piece as soon as its
last byte arrived; memory stays at about one piece plus aiohttp's buffers.

The web seed does not verify pieces: the caller hashes each yielded piece (with
:class:`~swarmhub.storage.verify.PieceVerifier`, in a thread) and calls
:meth:`WebSeed.strike` when one fails; after ``max_strikes`` failures the web seed is
disabled for good.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import logging
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import NamedTuple, TypeVar
from urllib.parse import quote

import aiohttp

from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import FileEntry, Metainfo

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "RangeRequest",
    "Segment",
    "WebSeed",
    "WebSeedBusy",
    "WebSeedError",
    "file_url",
    "overlapped",
    "plan_requests",
]

log = logging.getLogger(__name__)

#: Seconds to wait after a 503/429 that carries no (usable) Retry-After header.
DEFAULT_RETRY_AFTER = 30.0
#: Retry-After values above this are clamped (a broken header must not park us for days).
_MAX_RETRY_AFTER = 3600.0

_T = TypeVar("_T")

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


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:
        return DEFAULT_RETRY_AFTER
    return min(max(0.0, when.timestamp() - time.time()), _MAX_RETRY_AFTER)


class _Assembler:
    """Copies the segments of one piece at a time into a fresh zeroed buffer.

    Requests run in piece-space order, so a piece's segments arrive in order and a piece
    is complete when it has received all the bytes the plan assigned to it; pad ranges
    are simply never written, so they stay zero. Copying each network chunk into the
    piece buffer at once (rather than keeping the chunks and joining them) lets aiohttp's
    chunks be freed while still in cache: one copy per byte, ~15 % faster on loopback.
    """

    __slots__ = ("_buf", "_got", "_meta", "_need", "_piece")

    def __init__(self, meta: Metainfo, need: dict[int, int]) -> None:
        self._meta = meta
        self._need = need
        self._piece = -1
        self._buf = bytearray()
        self._got = 0

    def add(self, piece: int, offset: int, data: memoryview) -> tuple[int, bytearray] | None:
        if piece != self._piece:
            self._piece, self._buf, self._got = piece, bytearray(self._meta.piece_size(piece)), 0
        n = len(data)
        self._buf[offset : offset + n] = data
        self._got += n
        if self._got < self._need[piece]:
            return None
        buf, self._buf, self._piece = self._buf, bytearray(), -1
        return piece, buf


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
        http: aiohttp.ClientSession,
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
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
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
        if self.banned:
            raise WebSeedError(self.url, "disabled after pieces failed their hash check")
        meta = self.meta
        plan = plan_requests(meta, pieces, self.url, self.max_request)
        need = dict.fromkeys(sorted(set(pieces)), 0)
        for req in plan:
            for seg in req.segments:
                need[seg.piece] += seg.length
        for index, n in need.items():
            if n == 0:
                yield index, bytearray(meta.piece_size(index))
        asm = _Assembler(meta, need)
        for req in plan:
            if self.banned:
                raise WebSeedError(self.url, "disabled after pieces failed their hash check")
            async with contextlib.aclosing(self._run(req, asm)) as stream:
                async for item in stream:
                    yield item

    async def _run(
        self, req: RangeRequest, asm: _Assembler
    ) -> AsyncGenerator[tuple[int, bytearray], None]:
        self.requests += 1
        headers = {**self.headers, "Range": req.range_header, "Accept-Encoding": "identity"}
        log.debug("web seed GET %s %s", req.url, req.range_header)
        try:
            async with self.http.get(req.url, headers=headers, timeout=self._timeout) as resp:
                whole = self._check(req, resp)
                remaining = req.length
                segs = req.segments
                k = 0
                seg_left = segs[0].length
                while remaining:
                    chunk = await resp.content.readany()
                    if not chunk:
                        raise WebSeedError(
                            req.url,
                            f"body ended after {req.length - remaining} of {req.length} bytes "
                            f"({req.range_header})",
                        )
                    n = len(chunk)
                    if n > remaining:  # a 200 with the whole file: keep what we asked for
                        n = remaining
                    view = memoryview(chunk)[:n]
                    remaining -= n
                    self.bytes_downloaded += n
                    pos = 0
                    while pos < n:
                        if seg_left == 0:
                            k += 1
                            seg_left = segs[k].length
                        seg = segs[k]
                        take = min(seg_left, n - pos)
                        done = asm.add(
                            seg.piece, seg.offset + seg.length - seg_left, view[pos : pos + take]
                        )
                        pos += take
                        seg_left -= take
                        if done is not None:
                            yield done
                    if self.rate_limiter is not None:
                        await self.rate_limiter.acquire(n)
                if whole:
                    resp.close()  # drop the rest of the file rather than drain it
        except WebSeedError as exc:
            self._failed(exc)
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
            detail = str(exc)
            err = WebSeedError(
                req.url, f"{what}{': ' + detail if detail else ''} ({req.range_header})"
            )
            self._failed(err)
            raise err from exc

    def _failed(self, exc: WebSeedError) -> None:
        self.failures += 1
        self.last_error = str(exc)
        log.debug("%s", exc)

    def _check(self, req: RangeRequest, resp: aiohttp.ClientResponse) -> bool:
        """Validate status and headers; True when the body is the whole file (a 200)."""
        status = resp.status
        if status in (503, 429):
            retry = _retry_after(resp.headers.get("Retry-After"))
            raise WebSeedBusy(req.url, f"busy (HTTP {status}), retry after {retry:g} s", retry)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise WebSeedError(req.url, f"unexpected Content-Encoding {encoding!r}")
        length = resp.content_length
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None:
                raise WebSeedError(
                    req.url,
                    f"206 without a usable Content-Range "
                    f"({resp.headers.get('Content-Range')!r}) for {req.range_header}",
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


async def overlapped(items: AsyncIterator[_T], work: Callable[[_T], Awaitable[None]],
                     depth: int) -> None:
    """Run ``work`` on each item as it arrives, up to ``depth`` at once, while the next
    items stream in: a web seed's next piece is received while the last ones are hashed
    and written (in turn, the stream stalled for every piece's hash: the HTTP origin is
    faster than one core hashes on loopback). The first error is raised once the work
    already started has finished; on an error or cancellation that work is awaited too,
    so no piece is left half-handled."""
    running: set[asyncio.Future[None]] = set()
    try:
        async for item in items:
            while len(running) >= max(1, depth):
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    fut.result()
            running.add(asyncio.ensure_future(work(item)))
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                fut.result()
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)
