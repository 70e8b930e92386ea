"""One small HTTP/1.1 GET over asyncio streams: what a tracker announce or scrape needs.

Why not aiohttp here: importing it (with the SSL contexts it makes at import) cost a
``swarmhub get`` ~0.08-0.12 CPU-s before its first peer, for one GET of a few hundred
bytes every few minutes. Web seeds and the hub client keep aiohttp (large bodies, keep-alive,
resume).

The pure half (:func:`request_bytes`, :func:`parse_response`) never touches the network. The
request says ``Connection: close``, so the answer ends at EOF: :func:`get` reads it whole
(bounded), then parses it at once. Bodies come as sent with ``Content-Length``, chunked
(RFC 9112 §7.1) or up to EOF; redirects (301, 302, 303, 307, 308) are followed up to
:data:`MAX_REDIRECTS`. ``https`` URLs get one default TLS context per process (system CAs),
made on first use. Malformed answers raise ``ValueError``; network failures ``OSError``;
the deadline ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

__all__ = ["MAX_HEAD", "MAX_REDIRECTS", "HttpAnswer", "get", "parse_response", "request_bytes"]

#: Redirects followed before giving up (aiohttp allows 10; trackers rarely use any).
MAX_REDIRECTS = 5
#: Largest status line + headers accepted.
MAX_HEAD = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
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


def request_bytes(url: str, user_agent: str) -> bytes:
    """The GET request for ``url`` (``Connection: close``: the answer ends at EOF)."""
    _, _, _, host_header, target = _split(url)
    return (f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n"
            "Accept-Encoding: identity\r\nConnection: close\r\n\r\n").encode("latin-1")


def _dechunk(data: bytes, max_body: int) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("chunked body ends inside a chunk size line")
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise ValueError("negative chunk size")
        if size == 0:
            return bytes(out)  # trailers (if any) are ignored
        start = eol + 2
        if start + size > len(data):
            raise ValueError("chunked body ends inside a chunk")
        out += data[start:start + size]
        if len(out) > max_body:
            raise ValueError(f"body larger than {max_body} bytes")
        pos = start + size + 2


def parse_response(raw: bytes, max_body: int) -> HttpAnswer:
    """The answer in ``raw`` (everything the server sent before closing); ``ValueError``
    when it is not a complete HTTP/1.x answer or its body passes ``max_body`` bytes."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise ValueError("the answer ends before its headers do")
    lines = raw[:end].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    data = raw[end + 4:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(data, max_body)
    elif "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise ValueError(f"bad Content-Length {text[:20]!r}")
        length = int(text)
        if length > max_body:
            raise ValueError(f"body larger than {max_body} bytes")
        if len(data) < length:
            raise ValueError(f"body ends after {len(data)} of {length} bytes")
        body = data[:length]
    else:
        body = data
    if len(body) > max_body:
        raise ValueError(f"body larger than {max_body} bytes")
    return HttpAnswer(int(code), reason, headers, body)


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        import ssl

        _tls = ssl.create_default_context()
    return _tls


async def _fetch(url: str, user_agent: str, max_body: int) -> HttpAnswer:
    scheme, host, port, _, _ = _split(url)
    tls: Any = _tls_context() if scheme == "https" else None
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, limit=MAX_HEAD)
    bound = MAX_HEAD + max_body  # read one byte past it: parse_response then refuses
    raw = bytearray()
    try:
        writer.write(request_bytes(url, user_agent))
        await writer.drain()
        while len(raw) <= bound and (more := await reader.read(bound + 1 - len(raw))):
            raw += more
    finally:
        writer.close()
    return parse_response(bytes(raw), max_body)


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
