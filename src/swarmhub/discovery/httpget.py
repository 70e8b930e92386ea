"""One small HTTP/1.1 GET over asyncio streams: what a tracker announce or scrape needs.

Why not aiohttp here: importing it (with the SSL contexts it makes at import) cost a
``swarmhub get`` ~0.08-0.12 CPU-s before its first peer, for one GET of a few hundred
bytes every few minutes. Web seeds and the hub client keep aiohttp (large bodies, keep-alive,
resume). The HTTP/1.1 framing is h11's (the sans-IO reference implementation, ~0.02 s to
import): this module only moves its bytes.

The pure half (:func:`request_bytes`, :func:`parse_response`, :class:`_Answer`) never touches
the network. The request says ``Connection: close``; bodies come with ``Content-Length``,
chunked or up to EOF (all three framed by h11); redirects (301, 302, 303, 307, 308) are
followed up to :data:`MAX_REDIRECTS`. ``https`` URLs get one default TLS context per process
(system CAs), made on first use. Malformed answers raise ``ValueError``; network failures
``OSError``; the deadline ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11

if TYPE_CHECKING:
    import ssl

__all__ = ["MAX_HEAD", "MAX_REDIRECTS", "HttpAnswer", "get", "parse_response", "request_bytes"]

#: Redirects followed before giving up (aiohttp allows 10; trackers rarely use any).
MAX_REDIRECTS = 5
#: Largest status line + headers accepted.
MAX_HEAD = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ = 64 * 1024
_tls: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A complete HTTP answer: status code, reason phrase, header names lowercased (the
    last of repeated ones), and the body (de-chunked)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def _split(url: str) -> tuple[str, str, int, str, str]:
    """``(scheme, host, port, Host header, request target)``; the query stays as given
    (percent-encoded binary hashes must reach the tracker byte for byte)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)  # ValueError if out of range
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise ValueError(f"URL {url!r} has a space or line break in its path or query")
    return scheme, host, port, parts.netloc.rpartition("@")[2], target


def _client() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)


def _send_request(conn: h11.Connection, url: str, user_agent: str) -> bytes:
    _, _, _, host_header, target = _split(url)
    request = h11.Request(method="GET", target=target.encode("latin-1"), headers=[
        ("Host", host_header), ("User-Agent", user_agent),
        ("Accept-Encoding", "identity"), ("Connection", "close")])
    try:
        return (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise ValueError(f"cannot send a GET for {url!r}: {exc}") from None


def request_bytes(url: str, user_agent: str) -> bytes:
    """The GET request for ``url`` (``Connection: close``: one answer per connection)."""
    return _send_request(_client(), url, user_agent)


class _Answer:
    """Collects one answer from the bytes a server sends (``b""`` = EOF), refusing a body
    past ``max_body`` bytes as soon as it passes."""

    def __init__(self, conn: h11.Connection, max_body: int) -> None:
        self._conn = conn
        self._max_body = max_body
        self._head: h11.Response | None = None
        self._body = bytearray()

    def feed(self, data: bytes) -> HttpAnswer | None:
        """The answer once complete, else None (send more bytes)."""
        conn = self._conn
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ValueError(f"malformed HTTP answer: {exc}") from None
            if event is h11.NEED_DATA:
                if not data:  # EOF and h11 still waits: cannot happen, but never spin
                    raise ValueError("the answer ends early")
                return None
            if isinstance(event, h11.Response):
                self._head = event
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body:
                    raise ValueError(f"body larger than {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                raise ValueError("the server closed the connection without an answer")
            # InformationalResponse (1xx): wait for the final one

    def _answer(self) -> HttpAnswer:
        assert self._head is not None  # h11 gives EndOfMessage only after a Response
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in self._head.headers}
        return HttpAnswer(self._head.status_code, self._head.reason.decode("latin-1"),
                          headers, bytes(self._body))


def parse_response(raw: bytes, max_body: int) -> HttpAnswer:
    """The answer in ``raw`` (everything the server sent before closing); ``ValueError``
    when it is not a complete HTTP/1.x answer or its body passes ``max_body`` bytes."""
    conn = _client()
    _send_request(conn, "http://localhost/", "swarmhub")
    answer = _Answer(conn, max_body)
    return answer.feed(raw) or _must(answer.feed(b""))


def _must(answer: HttpAnswer | None) -> HttpAnswer:
    if answer is None:
        raise ValueError("the answer ends early")
    return answer


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        import ssl

        _tls = ssl.create_default_context()
    return _tls


async def _fetch(url: str, user_agent: str, max_body: int) -> HttpAnswer:
    scheme, host, port, _, _ = _split(url)
    tls: Any = _tls_context() if scheme == "https" else None
    conn = _client()
    request = _send_request(conn, url, user_agent)
    answer = _Answer(conn, max_body)
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        writer.write(request)
        await writer.drain()
        while True:  # bounded: each read is data (body capped) or EOF (then it ends)
            data = await reader.read(_READ)
            if (done := answer.feed(data)) is not None:
                return done
            if not data:
                raise ValueError("the answer ends early")
    finally:
        writer.close()


async def get(url: str, *, timeout: float, user_agent: str, max_body: int) -> HttpAnswer:
    """GET ``url`` (following redirects) within ``timeout`` seconds in all."""
    async with asyncio.timeout(timeout):
        for _ in range(MAX_REDIRECTS + 1):
            answer = await _fetch(url, user_agent, max_body)
            location = answer.headers.get("location")
            if answer.status not in _REDIRECTS or not location:
                return answer
            # the new URL as the server wrote it (already encoded: not re-quoted)
            url = urllib.parse.urljoin(url, location)
    raise ValueError(f"more than {MAX_REDIRECTS} redirects")
