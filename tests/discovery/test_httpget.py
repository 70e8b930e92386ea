"""The tracker client's one GET (:mod:`swarmhub.discovery.httpget`): the request it writes,
the answers it reads (Content-Length, chunked, up to EOF), redirects, and the bounds it
keeps; against raw servers on 127.0.0.1 that write exactly the bytes a test gives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.discovery import httpget
from swarmhub.discovery.httpget import get, parse_response, request_bytes

BODY = b"d8:intervali1800e5:peers0:e"


def test_request_keeps_the_encoded_query_byte_for_byte() -> None:
    url = "http://tr.example:6969/announce?passkey=a%2Bb&info_hash=%00%FF%12"
    assert request_bytes(url, "ua/1") == (
        b"GET /announce?passkey=a%2Bb&info_hash=%00%FF%12 HTTP/1.1\r\nHost: tr.example:6969\r\n"
        b"User-Agent: ua/1\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n")


def test_request_for_an_ipv6_host_and_no_path() -> None:
    req = request_bytes("http://user@[::1]:80", "ua")
    assert req.startswith(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n")


@pytest.mark.parametrize("url", ["ftp://x/a", "http:///announce", "http://x:99999/a",
                                 "http://x/a b", "http://x/a\r\nX: y"])
def test_urls_it_cannot_send_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError):
        request_bytes(url, "ua")


def test_bodies_by_length_by_chunks_and_up_to_eof() -> None:
    by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert parse_response(by_length, 100).body == b"hello"
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert parse_response(chunked, 100).body == b"hello"
    to_eof = parse_response(b"HTTP/1.0 403 Forbidden\r\nServer: x\r\n\r\nhello", 100)
    assert (to_eof.status, to_eof.reason, to_eof.headers, to_eof.body) == (
        403, "Forbidden", {"server": "x"}, b"hello")


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",  # cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  # no end of headers
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc",
])
def test_broken_answers_are_value_errors(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(raw, 100)


def test_a_body_past_the_bound_is_refused_however_it_comes() -> None:
    for raw in (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11,
                b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n" + b"x" * 11
                + b"\r\n0\r\n\r\n"):
        with pytest.raises(ValueError, match="larger than 10"):
            parse_response(raw, 10)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_value_error(raw: bytes) -> None:
    try:
        answer = parse_response(b"HTTP/1.1 200 OK\r\n" + raw, 100)
    except ValueError:
        return
    assert len(answer.body) <= 100


Handler = Callable[[bytes, int], bytes]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], asyncio.Future[int]]]:
    """``await serve(handler)`` -> a port whose connections get ``handler(request, port)``
    written back, then closed; the requests are kept in ``serve.seen``."""
    servers: list[asyncio.Server] = []
    seen: list[bytes] = []

    async def serve(handler: Handler) -> int:
        port = 0

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            writer.write(handler(head, port))
            with contextlib.suppress(ConnectionError):  # a client that stopped reading
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(one, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return port

    serve.seen = seen  # type: ignore[attr-defined]
    yield serve  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_real_get_sends_the_user_agent_and_reads_to_eof(raw_server: Callable[
        [Handler], asyncio.Future[int]]) -> None:
    port = await raw_server(lambda req, _: b"HTTP/1.0 200 OK\r\n\r\n" + BODY)
    answer = await get(f"http://127.0.0.1:{port}/announce?x=%01", timeout=10,
                       user_agent="swarmhub/test", max_body=1000)
    assert (answer.status, answer.body) == (200, BODY)
    seen = raw_server.seen  # type: ignore[attr-defined]
    assert seen[0].startswith(b"GET /announce?x=%01 HTTP/1.1\r\n")
    assert b"User-Agent: swarmhub/test\r\n" in seen[0]


async def test_redirects_are_followed_to_the_new_place(raw_server: Callable[
        [Handler], asyncio.Future[int]]) -> None:
    def answer(req: bytes, port: int) -> bytes:
        if req.startswith(b"GET /old"):
            return b"HTTP/1.1 302 Found\r\nLocation: /new?a=%41\r\nContent-Length: 0\r\n\r\n"
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(BODY):x}\r\n".encode() + BODY + b"\r\n0\r\n\r\n")

    port = await raw_server(answer)
    got = await get(f"http://127.0.0.1:{port}/old", timeout=10, user_agent="ua", max_body=1000)
    assert got.body == BODY
    assert raw_server.seen[1].startswith(b"GET /new?a=%41 ")  # type: ignore[attr-defined]


async def test_endless_redirects_end(raw_server: Callable[[Handler], asyncio.Future[int]]
                                     ) -> None:
    port = await raw_server(lambda req, p: b"HTTP/1.1 301 Moved\r\nLocation: /again\r\n\r\n")
    with pytest.raises(ValueError, match="redirects"):
        await get(f"http://127.0.0.1:{port}/", timeout=10, user_agent="ua", max_body=10)
    assert len(raw_server.seen) == httpget.MAX_REDIRECTS + 1  # type: ignore[attr-defined]


async def test_a_huge_answer_is_cut_at_the_bound(raw_server: Callable[
        [Handler], asyncio.Future[int]]) -> None:
    port = await raw_server(lambda req, _: b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 200_000)
    with pytest.raises(ValueError, match="larger than 1000"):
        await get(f"http://127.0.0.1:{port}/", timeout=10, user_agent="ua", max_body=1000)
