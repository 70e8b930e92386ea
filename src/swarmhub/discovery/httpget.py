"""swarmhub's HTTP/1.1 client: tracker announces, the hub API, whole-file downloads, web
seed ranges and uploads to a hub (``swarmhub publish``), over asyncio with h11's framing.

Why not aiohttp: importing it (with the SSL contexts it makes at import) cost a
``swarmhub get`` ~0.08-0.12 CPU-s before its first peer, and its body stream hands out a
fresh ``bytes`` per chunk that a web seed then copies into the piece buffer. h11 (the
sans-IO reference implementation, ~0.02 s to import) frames requests and answer heads;
this module moves the bytes.

- :class:`HttpClient` keeps idle connections per origin (scheme, host, port) for reuse
  (a web seed asks for many ranges; the hub client asks for an entry, then a torrent), and
  retries a GET once on a new connection when a reused one turns out closed by the server
  before any byte of the answer.
- A body framed by ``Content-Length`` (every origin server we meet) is read by
  :meth:`Response.readinto` straight from the socket into the caller's buffer: the
  transport's ``recv_into`` fills the caller's memory (:class:`_Conn` is a
  ``BufferedProtocol``), no bytes object per chunk. Chunked and read-to-EOF bodies go
  through h11 (one copy).
- A request body (:class:`Upload`, :meth:`HttpClient.post`) is written chunk by chunk,
  each once the transport has room (a file of any size in bounded memory); an answer
  that comes before the body is sent whole (a refused token) ends the sending and is
  the answer.
- Redirects (301, 302, 303, 307, 308) of a GET are followed up to :data:`MAX_REDIRECTS`; the
  ``Authorization`` header is dropped when one leads to another origin. ``https`` uses one
  default TLS context per process (system CAs), made on first use. Heads are bounded by
  :data:`MAX_HEAD`. ``connect_timeout`` bounds a connect, ``read_timeout`` every wait for
  bytes (a stall), not a whole transfer.

Failures: malformed or truncated answers raise :class:`HttpError` (a ``ValueError``),
network failures ``OSError`` (:class:`ConnectError` when the connection could not be
made), stalls and deadlines ``TimeoutError``. :func:`get` is the one-shot GET of a tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import h11

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncGenerator, Callable, Mapping

__all__ = ["MAX_HEAD", "MAX_REDIRECTS", "ConnectError", "HttpAnswer", "HttpClient", "HttpError",
           "NoAnswer", "Response", "Upload", "get", "parse_response", "request_bytes"]

#: Redirects followed before giving up (aiohttp allows 10; trackers rarely use any).
MAX_REDIRECTS = 5
#: Largest status line + headers accepted.
MAX_HEAD = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: The receive buffer of a connection while no body is read into a caller's buffer.
_SCRATCH = 256 * 1024
#: Received bytes nobody asked for yet, past which the connection stops reading: none,
#: until a read waits again (:meth:`_Conn.resume`; nor does it read between the reads
#: of a body into the caller's buffer). A body read while the caller waits
#: goes from the socket straight into its buffer; one that came while it was busy went
#: scratch -> held -> its buffer (with 1 MiB held and reading resumed as soon as it was
#: taken, 3/4 of a web seed's 64 MiB took that way, 1/5 after a read: 1/4 of a hybrid
#: get's event-loop CPU). Meanwhile the bytes wait in the kernel's socket buffer.
_HIGH = 0
#: A redirect's or refused reply's body up to this is read to keep the connection.
_DRAIN = 64 * 1024
_NO_BODY = frozenset({204, 304})
_tls: ssl.SSLContext | None = None


class HttpError(ValueError):
    """A malformed, truncated or unacceptable HTTP answer."""


class NoAnswer(HttpError):
    """No byte of an answer before the connection closed (on a reused connection: the
    server had closed it while idle)."""


class ConnectError(OSError):
    """The connection to ``host:port`` could not be made (``os_error`` says why)."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {os_error.strerror or os_error}")
        self.errno = os_error.errno
        self.host = host
        self.port = port
        self.os_error = os_error


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A complete HTTP answer: status code, reason phrase, header names lowercased (the
    last of repeated ones), and the body (de-chunked)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Upload:
    """A request body: ``length`` bytes that ``chunks()`` yields, in order (called again
    when the request is sent anew on a fresh connection)."""

    length: int
    chunks: Callable[[], AsyncGenerator[bytes, None]]


def _split(url: str) -> tuple[str, str, int, str, str]:
    """``(scheme, host, port, Host header, request target)``; the query stays as given
    (percent-encoded binary hashes must reach the tracker byte for byte)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise HttpError(f"not an http(s) URL: {url!r}")
    host = parts.hostname
    if not host:
        raise HttpError(f"no host in URL {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)  # ValueError if out of range
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise HttpError(f"URL {url!r} has a space or line break in its path or query")
    return scheme, host, port, parts.netloc.rpartition("@")[2], target


def _client() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)


def _request(conn: h11.Connection, url: str, headers: Mapping[str, str], method: str = "GET",
             length: int | None = None) -> bytes:
    """The request's head, and its end unless a body of ``length`` bytes follows."""
    _, _, _, host_header, target = _split(url)
    fields = [("Host", host_header)]
    fields += [(k, v) for k, v in headers.items() if k.lower() != "connection"]
    if not any(k.lower() == "accept-encoding" for k in headers):
        fields.append(("Accept-Encoding", "identity"))
    if length is not None:
        fields.append(("Content-Length", str(length)))
    fields += [(k, v) for k, v in headers.items() if k.lower() == "connection"]
    request = h11.Request(method=method, target=target.encode("latin-1"), headers=fields)
    try:
        head = conn.send(request) or b""
        return head if length is not None else head + (conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise HttpError(f"cannot send a {method} for {url!r}: {exc}") from None


def request_bytes(url: str, user_agent: str) -> bytes:
    """The one-shot GET request for ``url`` (``Connection: close``), as :func:`get` sends."""
    return _request(_client(), url, {"User-Agent": user_agent, "Connection": "close"})


def parse_response(raw: bytes, max_body: int) -> HttpAnswer:
    """The answer in ``raw`` (everything the server sent before closing); ``HttpError``
    when it is not a complete HTTP/1.x answer or its body passes ``max_body`` bytes."""
    conn = _client()
    _request(conn, "http://localhost/", {})
    conn.receive_data(raw)
    conn.receive_data(b"")
    head: h11.Response | None = None
    body = bytearray()
    while True:
        event = _next(conn)
        if event is h11.NEED_DATA:
            raise HttpError("the answer ends early")
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise HttpError(f"body larger than {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None  # h11 gives EndOfMessage only after a Response
            return HttpAnswer(head.status_code, head.reason.decode("latin-1"),
                              _headers(head.headers), bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("the server closed the connection without an answer")


def _next(conn: h11.Connection) -> Any:
    try:
        return conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HttpError(f"malformed HTTP answer: {exc}") from None


def _headers(raw: Any) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        import ssl

        _tls = ssl.create_default_context()
    return _tls


class _Conn(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection. Bytes land in a scratch buffer, except while
    :meth:`recv_into` waits: then the transport reads straight into the caller's memory."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._scratch = memoryview(bytearray(_SCRATCH))
        self._data = bytearray()  # received, not yet taken
        self._target: memoryview | None = None
        self._filled = 0
        self.eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._full = False  # the transport's write buffer is past its high-water mark
        #: answers read on this connection (0: fresh, not yet known to work)
        self.used = 0

    # -- protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's: no subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self._target
        if target is not None and self._filled < len(target):
            return target[self._filled:]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        target = self._target
        if target is not None and self._filled < len(target):
            self._filled += nbytes
            if self._filled >= len(target):
                self._pause()  # the next bytes wait for the next buffer (not the scratch)
        else:
            self._data += self._scratch[:nbytes]
            if len(self._data) > _HIGH:
                self._pause()
        self._wake()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.eof:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def pause_writing(self) -> None:
        self._full = True

    def resume_writing(self) -> None:
        self._full = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- reading
    async def _wait(self, timeout: float | None) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data

    def resume(self) -> None:
        """Read the socket again (before a read waits, and when the connection goes idle:
        a server closing it must be seen)."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _ended(self) -> bytes:
        if self._exc is not None:
            raise ConnectionResetError(f"connection lost: {self._exc}") from self._exc
        return b""

    async def recv(self, timeout: float | None) -> bytes:
        """The bytes received so far, waiting for some; ``b""`` at EOF."""
        while not self._data and not self.eof:
            self.resume()
            await self._wait(timeout)
        return self._take() if self._data else self._ended()

    def unread(self, data: bytes) -> None:
        """Put back bytes received past the answer's head (the body's first bytes)."""
        self._data[:0] = data

    async def recv_into(self, view: memoryview, timeout: float | None) -> int:
        """Receive into ``view``: as many bytes as arrived (at least one), 0 at EOF."""
        if self._data:
            n = min(len(view), len(self._data))
            with memoryview(self._data) as held:
                view[:n] = held[:n]
            del self._data[:n]
            return n
        if self.eof:
            self._ended()
            return 0
        self._target, self._filled = view, 0
        try:
            while self._filled == 0 and not self.eof:
                self.resume()
                await self._wait(timeout)
        finally:
            self._target = None
            # the caller is busy with these bytes: the next ones wait in the kernel for
            # its next read (into its buffer) rather than arrive here and be copied twice
            self._pause()
        if self._filled == 0:
            self._ended()
        return self._filled

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    @property
    def answered(self) -> bool:
        """Bytes of an answer (or the end of the connection) arrived."""
        return bool(self._data) or self.eof

    async def drain(self, timeout: float | None) -> None:
        """Wait until the transport has room for more (``timeout``: a stall), or until an
        answer (or the end) arrived: then the caller stops writing."""
        while self._full and not self.answered:
            await self._wait(timeout)

    @property
    def alive(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.eof = True


class Response:
    """An answer whose head has arrived; read the body with :meth:`readinto`,
    :meth:`read` or :meth:`json`, then :meth:`release` (the connection goes back to the
    pool once the body was read whole) or :meth:`close` (drop it). An ``async with``
    releases it."""

    def __init__(self, client: HttpClient, conn: _Conn, parser: h11.Connection,
                 head: h11.Response, url: str, read_timeout: float | None) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self._parser = parser
        self._timeout = read_timeout
        self.url = url
        self.status = head.status_code
        self.reason = head.reason.decode("latin-1")
        self.raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
        #: header names lowercased; the last of repeated ones (:meth:`getall` has all)
        self.headers = dict(self.raw_headers)
        # (a request body cut short by an early answer leaves our side mid-message)
        self._keep = head.http_version == b"1.1" and parser.our_state is h11.DONE and \
            "close" not in self.headers.get("connection", "").lower()
        length = self.headers.get("content-length")
        #: body bytes still to come when the length is known (None: chunked or to EOF)
        self._left: int | None = None
        self._pending = memoryview(b"")
        self._done = False
        if self.status in _NO_BODY:
            self._left, self._done = 0, True
            self._keep = self._keep and not parser.trailing_data[0]
        elif "transfer-encoding" not in self.headers and length is not None:
            self._left = int(length)  # h11 checked it is digits
            self._done = self._left == 0
            # bypass h11 for the body: its bytes past the head go back to the connection
            conn.unread(parser.trailing_data[0])
        else:
            self._keep = self._keep and "transfer-encoding" in self.headers
        #: the body's length when the server said it (Content-Length), else None
        self.content_length = self._left

    def getall(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order."""
        name = name.lower()
        return [v for k, v in self.raw_headers if k == name]

    async def readinto(self, view: memoryview) -> int:
        """Up to ``len(view)`` body bytes into ``view``; 0 once the body is complete.
        A body cut short raises :class:`HttpError`."""
        if self._done or not len(view):
            return 0
        conn = self._conn
        if conn is None:
            raise HttpError("the response was closed before its body was read")
        if self._left is not None:
            n = await conn.recv_into(view[:self._left], self._timeout)
            if n == 0:
                total = self.content_length or 0
                raise HttpError(f"the body ended after {total - self._left} of {total} bytes")
            self._left -= n
            self._done = self._left == 0
            return n
        while not self._pending:
            event = _next(self._parser)
            if event is h11.NEED_DATA:
                self._parser.receive_data(await conn.recv(self._timeout))
            elif isinstance(event, h11.Data):
                self._pending = memoryview(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                self._keep = self._keep and not self._parser.trailing_data[0]
                return 0
            else:
                raise HttpError("the server closed the connection within the body")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    async def read(self, max_body: int = 64 << 20) -> bytes:
        """The whole body, then :meth:`release`; :class:`HttpError` once it passes
        ``max_body`` bytes."""
        size = self.content_length
        if size is not None and size > max_body:
            raise HttpError(f"body larger than {max_body} bytes")
        buf = bytearray()
        chunk = memoryview(bytearray(min(size or 64 * 1024, 1 << 20)))
        # bounded: each read adds body bytes (at most max_body) or the body ends (0);
        # a Content-Length body cut short raises in readinto
        while n := await self.readinto(chunk):
            buf += chunk[:n]
            if len(buf) > max_body:
                raise HttpError(f"body larger than {max_body} bytes")
        self.release()
        return bytes(buf)

    async def json(self, max_body: int = 16 << 20) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not)."""
        return json.loads(await self.read(max_body))

    def release(self) -> None:
        """Done with this answer: its connection is reused if the body was read whole,
        else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep and conn.alive and not self._pending:
            conn.used += 1
            self._client._put(conn)
        else:
            self._client._drop(conn)

    def close(self) -> None:
        """Drop the connection (the rest of the body is not wanted)."""
        self._done = False
        self.release()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class HttpClient:
    """HTTP/1.1 GETs with keep-alive connections per origin (see the module docstring).

    ``headers`` go with every request (``User-Agent``...). Close it with :meth:`close` or
    ``async with``.
    """

    def __init__(self, *, headers: Mapping[str, str] | None = None,
                 connect_timeout: float | None = 15.0, read_timeout: float | None = 60.0,
                 keep_alive: bool = True, max_idle: int = 4) -> None:
        self.headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keep_alive = keep_alive
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._all: set[_Conn] = set()
        self._closed = False
        #: connections opened (a test of keep-alive reads it)
        self.connections_made = 0

    async def get(self, url: str, headers: Mapping[str, str] | None = None, *,
                  timeout: float | None = None, follow_redirects: bool = True) -> Response:
        """Send a GET for ``url`` and read the answer's head (following redirects);
        ``timeout`` overrides both the connect and the read timeout."""
        extra = dict(headers or {})
        first = _split(url)[:3]
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._once("GET", url, extra, timeout, None)
            location = resp.headers.get("location")
            if not follow_redirects or resp.status not in _REDIRECTS or not location:
                return resp
            await self._discard(resp)
            url = urllib.parse.urljoin(url, location)  # as the server wrote it: not re-quoted
            if _split(url)[:3] != first:  # credentials stay with their origin
                extra = {k: v for k, v in extra.items() if k.lower() != "authorization"}
        raise HttpError(f"more than {MAX_REDIRECTS} redirects")

    async def post(self, url: str, body: Upload, headers: Mapping[str, str] | None = None, *,
                   timeout: float | None = None) -> Response:
        """Send a POST of ``body`` to ``url`` and read the answer's head (a redirect is
        returned, not followed: the body would have to go again)."""
        return await self._once("POST", url, dict(headers or {}), timeout, body)

    async def _discard(self, resp: Response) -> None:
        if resp.content_length is not None and resp.content_length <= _DRAIN:
            try:
                await resp.read(_DRAIN)
                return
            except HttpError:
                pass
        resp.close()

    async def _once(self, method: str, url: str, extra: dict[str, str], timeout: float | None,
                    body: Upload | None) -> Response:
        scheme, host, port, _, _ = _split(url)
        origin = (scheme, host, port)
        headers = {**self.headers, **extra}
        if not self.keep_alive:
            headers["Connection"] = "close"
        read_timeout = self.read_timeout if timeout is None else timeout
        for _ in range(2):  # a reused connection the server had closed: once more, fresh
            conn = self._idle_conn(origin) or await self._connect(origin, timeout)
            parser = _client()
            length = None if body is None else body.length
            conn.send(_request(parser, url, headers, method, length))
            try:
                if body is not None:
                    await self._send_body(conn, parser, body, read_timeout)
                head = await self._head(conn, parser, read_timeout)
            except (NoAnswer, ConnectionError):
                self._drop(conn)
                if conn.used:
                    continue
                raise
            except BaseException:
                self._drop(conn)
                raise
            return Response(self, conn, parser, head, url, read_timeout)
        raise HttpError(f"{url}: the server closed the connection without an answer")

    @staticmethod
    async def _send_body(conn: _Conn, parser: h11.Connection, body: Upload,
                         timeout: float | None) -> None:
        """Write the body; stop early when an answer (or the end) arrives first."""
        try:
            async with contextlib.aclosing(body.chunks()) as chunks:  # (a file to close)
                async for chunk in chunks:
                    if conn.answered:
                        return
                    # to the transport as it is (h11 counts it, copies nothing)
                    for data in parser.send_with_data_passthrough(h11.Data(data=chunk)) or ():
                        conn.send(data)
                    await conn.drain(timeout)
            if not conn.answered:
                conn.send(parser.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:  # more or fewer bytes than body.length
            raise HttpError(f"the request body does not match its length: {exc}") from None

    @staticmethod
    async def _head(conn: _Conn, parser: h11.Connection, timeout: float | None) -> h11.Response:
        fed = 0
        while True:  # bounded: at most MAX_HEAD bytes are fed before the head ends; EOF
            event = _next(parser)
            if event is h11.NEED_DATA:
                if fed >= MAX_HEAD:
                    raise HttpError(f"malformed HTTP answer: head larger than {MAX_HEAD} bytes")
                data = await conn.recv(timeout)
                if not data and not fed:
                    raise NoAnswer("the server closed the connection without an answer")
                if fed + len(data) > MAX_HEAD:  # the rest waits: body bytes, or too much
                    conn.unread(data[MAX_HEAD - fed:])
                    data = data[:MAX_HEAD - fed]
                fed += len(data)
                parser.receive_data(data)
            elif isinstance(event, h11.Response):
                return event
            elif isinstance(event, h11.ConnectionClosed):
                raise NoAnswer("the server closed the connection without an answer")
            # InformationalResponse (1xx): wait for the final one

    def _idle_conn(self, origin: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.alive:
                return conn
            self._drop(conn)
        return None

    async def _connect(self, origin: tuple[str, str, int], timeout: float | None) -> _Conn:
        if self._closed:
            raise HttpError("the HTTP client is closed")
        scheme, host, port = origin
        tls: Any = _tls_context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        conn = _Conn(origin)
        try:
            async with asyncio.timeout(self.connect_timeout if timeout is None else timeout):
                if tls is None:
                    await loop.create_connection(lambda: conn, host, port)
                else:
                    await _connect_tls(loop, conn, host, port, tls)
        except TimeoutError:
            raise TimeoutError(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            if _is_tls(exc):
                raise
            raise ConnectError(host, port, exc) from exc
        self.connections_made += 1
        self._all.add(conn)
        return conn

    def _put(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if self._closed or not self.keep_alive or len(idle) >= self.max_idle:
            self._drop(conn)
        else:
            conn.resume()
            idle.append(conn)

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        self._all.discard(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use. Safe to call twice."""
        self._closed = True
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _connect_tls(loop: asyncio.AbstractEventLoop, conn: _Conn, host: str, port: int,
                       tls: ssl.SSLContext) -> None:
    """TCP, then TLS on it (``start_tls``), not ``create_connection(ssl=...)``: with
    uvloop's, a cancel (a timeout, a request given up) landing just after the TCP connect
    (2-3 loop turns in on loopback) left the handshake's failure (an https:// URL to a
    plain-HTTP server) in a future of uvloop's own that nobody read: "Future exception was
    never retrieved" with its traceback, 41 of 1,000 random cancels. In two steps the
    future a cancel finds awaited is the step's own, and it is cancelled: 0 of 1,000."""
    raw, _ = await loop.create_connection(asyncio.Protocol, host, port)
    try:
        transport = await loop.start_tls(raw, conn, tls, server_hostname=host)
    except BaseException:
        raw.abort()
        raise
    if transport is None:  # (typed Optional; a client's start_tls always returns one)
        raw.abort()
        raise ConnectionResetError(f"{host}:{port}: the TLS handshake ended the connection")
    conn.connection_made(transport)


def _is_tls(exc: OSError) -> bool:
    import ssl

    return isinstance(exc, ssl.SSLError | ssl.CertificateError)


async def get(url: str, *, timeout: float, user_agent: str, max_body: int) -> HttpAnswer:
    """GET ``url`` (following redirects) within ``timeout`` seconds in all, on a
    connection of its own (``Connection: close``): a tracker's one small answer."""
    async with asyncio.timeout(timeout), HttpClient(
            headers={"User-Agent": user_agent}, keep_alive=False,
            connect_timeout=None, read_timeout=None) as client:
        resp = await client.get(url)
        body = await resp.read(max_body)
        return HttpAnswer(resp.status, resp.reason, resp.headers, body)
