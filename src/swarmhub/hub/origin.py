"""The hub's HTTP origin: GET/HEAD of stored files with ranges, conditionals and sendfile.

:func:`serve_file` is the one handler body the hub uses for every file download. It makes
one executor call that opens the file and ``fstat()``s the open descriptor (so the
validators describe the bytes actually sent, with no stat/open race), asks the pure
:func:`swarmhub.hub.ranges.evaluate` what to answer, and maps the decision to a response.
Bodies go out with zero-copy ``loop.sendfile`` on the transport, as aiohttp's
``FileResponse`` does; when the loop has no sendfile (uvloop raises NotImplementedError)
or ``SWARMHUB_NOSENDFILE=1`` is set, the bytes are read with ``os.pread`` in the executor.

Overload policy (:class:`OriginLimiter`): the origin caps concurrent transfers and its
aggregate upload rate. At the cap, a GET with file bytes gets 503 with ``Retry-After``
and, when the hub knows it, a ``Link`` to the torrent: such a client is better served by
the swarm. Every range form counts (``bytes=0-`` is the whole file by another name, and
a client that sends it must not bypass the cap); ``range_overflow`` > 1 admits range
requests up to that multiple of the cap, for deployments that want web seeds to keep
going under load. HEAD, 304, 412 and 416 answers carry no file bytes and are never
refused. A client that stops reading would hold its transfer slot forever (sendfile
just waits): with ``stall_timeout`` set, :meth:`OriginLimiter.sweep` (run periodically
by the hub) aborts a transfer whose client has acknowledged no byte for that long,
read from the kernel's TCP_INFO, so the hot path pays nothing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import mimetypes
import os
import secrets
import socket
import stat
import struct
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.errors import StorageError, SwarmhubError
from swarmhub.hub.ranges import (
    Decision,
    DecisionKind,
    content_etag,
    evaluate,
    format_http_date,
    multipart_layout,
)
from swarmhub.hub.redact import redact

__all__ = [
    "NOSENDFILE_ENV",
    "ORIGIN_LIMITER_KEY",
    "SENDFILE_BYTES_KEY",
    "OriginLimiter",
    "SpanReader",
    "client_progress",
    "content_disposition",
    "json_errors_middleware",
    "make_static_app",
    "serve_file",
    "serve_stream",
]

log = logging.getLogger(__name__)

#: Set to 1 to send bodies with executor reads instead of sendfile (read per request).
NOSENDFILE_ENV = "SWARMHUB_NOSENDFILE"
#: ``request[SENDFILE_BYTES_KEY]``: body bytes sent with sendfile, which bypasses
#: aiohttp's writer and so its ``body_length``; the hub's access log adds them.
#: A typed ``web.RequestKey`` where aiohttp has one (3.14+; it warns about str keys).
SENDFILE_BYTES_KEY: Any = (
    web.RequestKey("swarmhub_sendfile_bytes", int)
    if hasattr(web, "RequestKey")
    else "swarmhub.sendfile_bytes"
)
#: Bytes per executor read on the fallback path (bounded memory per transfer).
_READ_CHUNK = 1 << 20
#: Largest sendfile call while a rate cap is on; smaller slices pace more smoothly.
_MAX_SLICE = 1 << 20
_MIN_SLICE = 16 << 10

#: ``tcpi_bytes_acked`` in Linux's ``struct tcp_info`` (since 4.1): its byte offset.
_BYTES_ACKED_AT = 120
_TCP_INFO_LEN = 256

#: Close futures kept alive until they finish (the close is not awaited, as in aiohttp).
_CLOSING: set[asyncio.Future[None]] = set()


class OriginLimiter:
    """Caps on concurrent HTTP transfers and on the origin's aggregate upload rate.

    ``max_transfers`` 0 means no cap, ``upload_rate`` 0 (bytes/s) no rate limit. The
    counters are what the hub's ``/metrics`` reads: ``bytes_served`` (file bytes sent),
    ``transfers_active``, ``transfers_total`` (admitted) and ``rejected_total`` (503s).
    """

    def __init__(
        self,
        max_transfers: int = 0,
        upload_rate: float = 0,
        *,
        retry_after: int = 10,
        range_overflow: int = 1,
        stall_timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_transfers < 0 or retry_after < 1 or range_overflow < 1:
            raise SwarmhubError(
                "origin limits: max_transfers must be >= 0 (0 = unlimited), "
                "retry_after >= 1 s and range_overflow >= 1"
            )
        self.max_transfers = max_transfers
        self.retry_after = retry_after
        self.range_overflow = range_overflow
        self.rate = RateLimiter(upload_rate, clock=clock)
        self.bytes_served = 0
        self.transfers_active = 0
        self.transfers_total = 0
        self.rejected_total = 0
        #: Seconds a transfer may go without the client acknowledging a byte (0 = forever).
        self.stall_timeout = stall_timeout
        self.stalled_total = 0
        # transport -> (its stall callback, [acknowledged bytes last seen, since when])
        self._watched: dict[asyncio.BaseTransport, tuple[Callable[[], None], list[float]]] = {}

    @property
    def upload_rate(self) -> float:
        return self.rate.rate

    def set_limits(
        self, max_transfers: int | None = None, upload_rate: float | None = None
    ) -> None:
        """Change the caps at run time; transfers already admitted are not cut off."""
        if max_transfers is not None:
            if max_transfers < 0:
                raise SwarmhubError("max_transfers must be >= 0 (0 = unlimited)")
            self.max_transfers = max_transfers
        if upload_rate is not None:
            self.rate.set_rate(upload_rate)

    def admit(self, *, whole_file: bool) -> bool:
        """Start a transfer if the policy allows it (module docstring); count a refusal."""
        cap = self.max_transfers
        if cap and self.transfers_active >= (cap if whole_file else cap * self.range_overflow):
            self.rejected_total += 1
            return False
        self.transfers_active += 1
        self.transfers_total += 1
        return True

    def release(self) -> None:
        """End a transfer started by :meth:`admit`."""
        self.transfers_active -= 1

    def watch(
        self, transport: asyncio.BaseTransport | None, now: float, on_stall: Callable[[], None]
    ) -> None:
        """Follow a transfer on ``transport`` until :meth:`unwatch`; a stall calls
        ``on_stall`` (the origin ends the transfer there, in its own task)."""
        if self.stall_timeout > 0 and transport is not None:
            self._watched[transport] = (on_stall, [-1.0, now])

    def unwatch(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self._watched.pop(transport, None)

    def sweep(
        self,
        now: float,
        progress: Callable[[asyncio.BaseTransport], int | None] | None = None,
    ) -> int:
        """Abort transfers whose client acknowledged nothing for ``stall_timeout`` s.

        ``progress`` gives the bytes a transport's client has acknowledged while data
        waits for it (default :func:`client_progress`); None means "not waiting on the
        client" or "cannot tell", which restarts the clock. Returns how many transfers
        were aborted.
        """
        if self.stall_timeout <= 0:
            return 0
        acked_of = progress or client_progress
        aborted = 0
        for transport, (on_stall, seen) in list(self._watched.items()):
            acked = acked_of(transport)
            if acked is None or acked != seen[0]:
                seen[0], seen[1] = (-1.0 if acked is None else acked), now
                continue
            if now - seen[1] >= self.stall_timeout:
                del self._watched[transport]
                self.stalled_total += 1
                aborted += 1
                on_stall()
        return aborted

    def slice_size(self) -> int:
        """Bytes per paced send: about 1/20 s of the rate, within 16 KiB..1 MiB."""
        rate = self.rate.rate
        return _MAX_SLICE if rate <= 0 else int(min(_MAX_SLICE, max(_MIN_SLICE, rate / 20)))


def client_progress(transport: asyncio.BaseTransport) -> int | None:
    """Bytes the client has acknowledged while data waits for it, else None.

    None when the socket's send queue is empty (the hub, not the client, is the slow
    side: its rate cap, its disk) or when the kernel cannot tell (not Linux).
    """
    sock = transport.get_extra_info("socket")
    tcp_info = getattr(socket, "TCP_INFO", None)
    if sock is None or tcp_info is None:
        return None
    try:
        import fcntl
        import termios
    except ImportError:  # not a Unix
        return None
    try:
        queued = bytearray(4)
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, queued)  # Linux SIOCOUTQ
        if int.from_bytes(queued, sys.byteorder) == 0:
            return None
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_LEN)
    except (OSError, ValueError):
        return None
    if len(info) < _BYTES_ACKED_AT + 8:
        return None
    acked: int = struct.unpack_from("=Q", info, _BYTES_ACKED_AT)[0]
    return acked


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266 header value: an ASCII ``filename`` and, for other names, ``filename*``."""
    safe = (
        "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename).strip()
        or "download"
    )
    value = f'{disposition}; filename="{safe}"'
    if safe != filename:
        value += "; filename*=UTF-8''" + urllib.parse.quote(filename, safe="")
    return value


def _json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _open_regular(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` and fstat the descriptor (the one blocking call, run in the executor).

    O_NONBLOCK keeps a FIFO from hanging the open; it does nothing to regular files.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb", buffering=0), st
    except BaseException:
        os.close(fd)
        raise


def _close_later(loop: asyncio.AbstractEventLoop, fobj: BinaryIO) -> None:
    fut = loop.run_in_executor(None, fobj.close)
    _CLOSING.add(fut)
    fut.add_done_callback(_CLOSING.discard)


async def serve_file(
    request: web.Request,
    path: Path,
    *,
    etag: str,
    content_type: str = "application/octet-stream",
    filename: str | None = None,
    limiter: OriginLimiter | None = None,
    torrent_url: str | None = None,
) -> web.StreamResponse:
    """Answer a GET or HEAD for the file at ``path`` (see the module docstring).

    ``etag`` is the strong ETag header value (:func:`swarmhub.hub.ranges.content_etag`);
    ``filename`` sets Content-Disposition; ``torrent_url`` goes into the 503 Link header.
    """
    if request.method not in ("GET", "HEAD"):
        resp = _json_error(405, f"method {request.method} is not allowed here; use GET or HEAD")
        resp.headers["Allow"] = "GET, HEAD"
        return resp
    loop = asyncio.get_running_loop()
    try:
        fobj, st = await loop.run_in_executor(None, _open_regular, path)
    except PermissionError:
        return _json_error(403, "the file exists but the hub may not read it")
    except OSError as exc:  # missing, a directory, a special file, a symlink loop...
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # not the file's fault: retry soon
            busy = _json_error(503, "the hub is out of file descriptors; retry shortly")
            busy.headers["Retry-After"] = "1"
            return busy
        return _json_error(404, "no such file")
    try:
        decision = evaluate(
            request.method,
            request.headers,
            etag,
            st.st_mtime,
            st.st_size,
            now=time.time(),
        )
        return await _respond(
            request, path, fobj, decision, st.st_mtime, etag, content_type, filename, limiter,
            torrent_url
        )
    finally:
        _close_later(loop, fobj)


#: Yields a stored file's bytes [start, end) from elsewhere than a local file (S3).
SpanReader = Callable[[int, int], AsyncIterator[bytes]]


async def serve_stream(
    request: web.Request,
    read_span: SpanReader,
    *,
    size: int,
    mtime: float,
    etag: str,
    content_type: str = "application/octet-stream",
    filename: str | None = None,
    limiter: OriginLimiter | None = None,
    torrent_url: str | None = None,
    label: str = "a remote file",
) -> web.StreamResponse:
    """:func:`serve_file` for bytes that ``read_span`` streams (from S3): the same
    conditionals, ranges (multipart too), limits and stall handling, without sendfile."""
    if request.method not in ("GET", "HEAD"):
        resp = _json_error(405, f"method {request.method} is not allowed here; use GET or HEAD")
        resp.headers["Allow"] = "GET, HEAD"
        return resp
    decision = evaluate(request.method, request.headers, etag, mtime, size, now=time.time())
    return await _respond(request, Path(label), None, decision, mtime, etag, content_type,
                          filename, limiter, torrent_url, read_span)


async def _respond(
    request: web.Request,
    path: Path,
    fobj: BinaryIO | None,
    decision: Decision,
    mtime: float,
    etag: str,
    content_type: str,
    filename: str | None,
    limiter: OriginLimiter | None,
    torrent_url: str | None,
    read_span: SpanReader | None = None,
) -> web.StreamResponse:
    kind = decision.kind
    size = decision.size
    if kind is DecisionKind.PRECONDITION_FAILED:
        return _json_error(412, "a precondition (If-Match / If-Unmodified-Since) failed")
    if kind is DecisionKind.RANGE_NOT_SATISFIABLE:
        unsatisfiable = _json_error(416, f"no requested range overlaps the file ({size} bytes)")
        unsatisfiable.headers["Content-Range"] = decision.content_ranges()[0]
        unsatisfiable.headers["Accept-Ranges"] = "bytes"
        return unsatisfiable

    resp = web.StreamResponse(status=decision.status)
    resp.headers["ETag"] = etag
    resp.headers["Last-Modified"] = format_http_date(mtime)
    resp.headers["Accept-Ranges"] = "bytes"
    if kind is DecisionKind.NOT_MODIFIED:  # §15.4.5: validators, no body or length
        await resp.prepare(request)
        return resp

    if filename is not None:
        resp.headers["Content-Disposition"] = content_disposition(filename)
    parts: list[tuple[bytes, int, int]] = []
    tail = b""
    if kind is DecisionKind.MULTIPART:
        boundary = secrets.token_hex(16)
        parts, tail = multipart_layout(decision.ranges, size, content_type, boundary)
        resp.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        resp.content_length = sum(len(h) + e - s for h, s, e in parts) + len(tail)
    else:
        resp.headers["Content-Type"] = content_type
        parts = [(b"", s, e) for s, e in decision.ranges]
        resp.content_length = decision.body_bytes
        if kind is DecisionKind.PARTIAL:
            resp.headers["Content-Range"] = decision.content_ranges()[0]

    if request.method == "HEAD" or not decision.has_body:
        await resp.prepare(request)
        return resp

    if limiter is not None and not limiter.admit(whole_file=kind is DecisionKind.FULL):
        return _overloaded(limiter, torrent_url)
    transport = request.transport
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as stalled:
            if limiter is not None:
                limiter.watch(transport, loop.time(), lambda: stalled.reschedule(loop.time()))
            await resp.prepare(request)
            await _send_body(request, resp, fobj, parts, tail, limiter, read_span)
            await resp.write_eof()
    except TimeoutError:  # the limiter's sweep: the client acknowledged nothing for long
        log.info("aborted a download of %s: the client stopped reading", path)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError as exc:
        # clients drop connections all the time (aria2 when a segment is done elsewhere)
        log.debug("client left during a download of %s: %s", path, exc)
        if request.transport is not None:
            request.transport.close()
    except (StorageError, OSError) as exc:
        # headers are out: the only honest signal left is closing the connection early
        log.warning("aborted a download of %s: %s", path, exc)
        if request.transport is not None:
            request.transport.close()
    finally:
        if limiter is not None:
            limiter.unwatch(transport)
            limiter.release()
    return resp


def _overloaded(limiter: OriginLimiter, torrent_url: str | None) -> web.Response:
    message = "the hub is busy serving other downloads"
    if torrent_url:
        message += f"; download it with BitTorrent from {torrent_url}, or retry later"
    resp = _json_error(
        503,
        message,
        retry_after=limiter.retry_after,
        **({"torrent": torrent_url} if torrent_url else {}),
    )
    resp.headers["Retry-After"] = str(limiter.retry_after)
    resp.headers["Accept-Ranges"] = "bytes"  # range requests are still admitted
    if torrent_url:
        resp.headers["Link"] = f'<{torrent_url}>; rel="alternate"; type="application/x-bittorrent"'
    return resp


async def _send_body(
    request: web.Request,
    resp: web.StreamResponse,
    fobj: BinaryIO | None,
    parts: list[tuple[bytes, int, int]],
    tail: bytes,
    limiter: OriginLimiter | None,
    read_span: SpanReader | None = None,
) -> None:
    use_sendfile = os.environ.get(NOSENDFILE_ENV, "") not in ("1", "true", "yes")
    for head, start, end in parts:
        if head:
            await resp.write(head)
        if read_span is not None:
            await _stream_span(resp, read_span, start, end, limiter)
            continue
        assert fobj is not None
        use_sendfile = await _send_span(request, resp, fobj, start, end, limiter, use_sendfile)
    if tail:
        await resp.write(tail)


async def _stream_span(
    resp: web.StreamResponse,
    read_span: SpanReader,
    start: int,
    end: int,
    limiter: OriginLimiter | None,
) -> None:
    """Relay bytes [start, end) from ``read_span``, paced and counted like file bytes."""
    paced = limiter is not None and not limiter.rate.unlimited
    pos = start
    async for chunk in read_span(start, end):
        if paced:
            assert limiter is not None
            await limiter.rate.acquire(len(chunk))
        await resp.write(chunk)
        pos += len(chunk)
        if limiter is not None:
            limiter.bytes_served += len(chunk)
    if pos != end:
        raise StorageError(f"the store sent {pos - start} of {end - start} bytes")


async def _send_span(
    request: web.Request,
    resp: web.StreamResponse,
    fobj: BinaryIO,
    start: int,
    end: int,
    limiter: OriginLimiter | None,
    use_sendfile: bool,
) -> bool:
    """Send file bytes [start, end); returns whether sendfile is still usable."""
    loop = asyncio.get_running_loop()
    paced = limiter is not None and not limiter.rate.unlimited
    step = limiter.slice_size() if limiter is not None and paced else end - start
    pos = start
    while pos < end:
        n = min(step, end - pos) if use_sendfile else min(step, end - pos, _READ_CHUNK)
        if paced:
            assert limiter is not None
            await limiter.rate.acquire(n)
        if use_sendfile:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
            fobj.seek(pos)
            try:
                sent = await loop.sendfile(transport, fobj, pos, n)
            except NotImplementedError:
                use_sendfile = False
                continue
            except BaseException:
                # the file position tells how far sendfile got (asyncio documents this)
                partial = max(0, fobj.tell() - pos)
                request[SENDFILE_BYTES_KEY] = request.get(SENDFILE_BYTES_KEY, 0) + partial
                if limiter is not None:
                    limiter.bytes_served += partial
                raise
            request[SENDFILE_BYTES_KEY] = request.get(SENDFILE_BYTES_KEY, 0) + sent
        else:
            data = await loop.run_in_executor(None, os.pread, fobj.fileno(), n, pos)
            sent = len(data)
            if sent:
                await resp.write(data)
        if sent <= 0:
            raise StorageError("the file shrank while it was being served")
        pos += sent
        if limiter is not None:
            limiter.bytes_served += sent
    return use_sendfile


# --- a static folder, for tests, benchmarks and web-seed experiments -------------------

ORIGIN_LIMITER_KEY = web.AppKey("origin_limiter", OriginLimiter)
_ETAG_CACHE_SIZE = 1024


class _BadPath(SwarmhubError):
    """A request path that tries to leave the served folder."""


def _locate(root: Path, tail: str) -> tuple[Path, tuple[int, int, int, int]]:
    """The file under ``root`` that ``tail`` names, and its identity for the ETag cache."""
    if "\x00" in tail or tail.startswith("/") or "\\" in tail:
        raise _BadPath(f"invalid file path {tail!r}")
    if any(part in (".", "..") for part in tail.split("/")):
        raise _BadPath(f"a file path may not contain '.' or '..' segments: {tail!r}")
    target = (root / tail).resolve(strict=True)
    if not target.is_relative_to(root):  # a symlink pointing out of the folder
        raise FileNotFoundError(tail)
    st = target.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(tail)
    return target, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def make_static_app(root: Path, *, limiter: OriginLimiter | None = None) -> web.Application:
    """An app serving the regular files under ``root`` at ``/<relative path>``.

    ETags are content hashes, computed once per file version (device, inode, size,
    mtime) in the executor. Paths with ``..``, ``.``, NUL, backslashes or a leading
    slash get 400; symlinks out of ``root`` and non-regular files get 404.
    """
    base = root.resolve(strict=True)
    etags: dict[tuple[int, int, int, int], asyncio.Future[str]] = {}
    app = web.Application(middlewares=[json_errors_middleware()])
    app[ORIGIN_LIMITER_KEY] = limiter or OriginLimiter()

    async def etag_of(path: Path, key: tuple[int, int, int, int]) -> str:
        fut = etags.get(key)
        if fut is None:
            if len(etags) >= _ETAG_CACHE_SIZE:
                etags.pop(next(iter(etags)))
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(None, _sha256_file, path)
            etags[key] = fut
        try:
            return content_etag(await asyncio.shield(fut))
        except OSError:
            etags.pop(key, None)
            raise

    async def handle(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        loop = asyncio.get_running_loop()
        try:
            path, key = await loop.run_in_executor(None, _locate, base, tail)
            etag = await etag_of(path, key)
        except _BadPath as exc:
            return _json_error(400, str(exc))
        except PermissionError:
            return _json_error(403, "the file exists but the hub may not read it")
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return _json_error(404, "no such file")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return await serve_file(
            request, path, etag=etag, content_type=ctype, limiter=request.app[ORIGIN_LIMITER_KEY]
        )

    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def json_errors_middleware(
    map_error: Callable[[Exception], web.StreamResponse | None] | None = None,
    server: str = "hub",
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp's own errors (bad method, bad route) and unexpected exceptions as JSON, never
    a traceback. ``map_error`` turns an application's exceptions into responses (or None);
    ``server`` names whose log holds the traceback of an unexpected one."""

    @web.middleware
    async def json_errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
            text = exc.text
            message = exc.reason if text is None or text.startswith(str(exc.status)) else text
            response = _json_error(exc.status, message)
            response.headers.update(keep)
            return response
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            mapped = map_error(exc) if map_error is not None else None
            if mapped is not None:
                return mapped
            log.exception(
                "unexpected error serving %s %s", request.method, redact(request.path)
            )
            return _json_error(500, f"internal error; see the {server}'s log")

    return json_errors


