"""The HTTP client (:class:`swarmhub.discovery.httpget.HttpClient`) and the hub client's
resumable download on it (:func:`swarmhub.client.http_download`): keep-alive reuse, a
reused connection the server had closed, bodies cut short, a 200 to a Range request,
redirects across origins, bounded heads; against raw servers on 127.0.0.1 that write
exactly the bytes a test gives."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import unread_failures_under_uvloop
from swarmhub.client import HubFile, http_download
from swarmhub.discovery.httpget import MAX_HEAD, HttpClient, HttpError, Response, Upload
from swarmhub.errors import SwarmhubError

#: (request head, connection number, request number on it) -> (bytes to write, then close?)
Handler = Callable[[bytes, int, int], tuple[bytes, bool]]


@dataclass
class Raw:
    """A server reading requests one after another on each connection (keep-alive)."""

    port: int = 0
    #: request heads, in order
    seen: list[bytes] = field(default_factory=list)
    connections: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Handler], asyncio.Future[Raw]]]:
    servers: list[asyncio.Server] = []

    async def serve(handler: Handler) -> Raw:
        state = Raw()

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = state.connections
            state.connections += 1
            try:
                for k in range(100):  # bounded: a test sends a few requests
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    state.seen.append(head)
                    data, close = handler(head, conn, k)
                    writer.write(data)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    if close:
                        return
            finally:
                writer.close()

        server = await asyncio.start_server(one, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield serve  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


def answer(body: bytes, status: str = "200 OK", **headers: str | int) -> bytes:
    head = {"Content-Length": len(body), **headers}
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k.replace('_', '-')}: {v}\r\n"
                                              for k, v in head.items())
            + "\r\n").encode() + body


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


async def test_requests_to_one_origin_reuse_one_connection(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    srv = await raw(lambda head, c, k: (answer(b"x" * (1000 + k)), False))
    async with HttpClient() as http:
        for k in range(3):
            async with await http.get(f"{srv.base}/a{k}") as resp:
                assert await resp.read() == b"x" * (1000 + k)
        assert http.connections_made == 1
    assert srv.connections == 1 and len(srv.seen) == 3


async def test_a_body_left_unread_costs_its_connection_not_the_next_answer(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    srv = await raw(lambda head, c, k: (answer(bytes([65 + c]) * 100_000), False))
    async with HttpClient() as http:
        async with await http.get(f"{srv.base}/a") as resp:
            buf = memoryview(bytearray(10))
            assert await resp.readinto(buf) > 0
        async with await http.get(f"{srv.base}/b") as resp:  # not the rest of the first
            assert await resp.read() == b"B" * 100_000
        assert http.connections_made == 2


async def test_a_reused_connection_the_server_closed_is_retried_fresh(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    """A keep-alive answer, then the server closes the connection as the next request
    arrives (its keep-alive timeout struck): that GET goes out again on a new connection
    instead of failing."""
    srv = await raw(lambda head, c, k: (b"", True) if (c, k) == (0, 1) else (answer(b"ok"), False))
    async with HttpClient() as http:
        for _ in range(2):
            assert await (await http.get(f"{srv.base}/")).read() == b"ok"
        assert http.connections_made == 2
    assert len(srv.seen) == 3


async def test_a_fresh_connection_closed_without_an_answer_is_an_error(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    srv = await raw(lambda head, c, k: (b"", True))
    async with HttpClient() as http:
        with pytest.raises(HttpError, match="without an answer"):
            await http.get(f"{srv.base}/")
    assert len(srv.seen) == 1  # not retried: nothing says a retry would fare better


@pytest.mark.parametrize("body", [
    answer(b"x" * 100_000)[:-40_000],  # by Content-Length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n" + b"x" * 100,  # chunked
])
async def test_a_server_closing_mid_body_is_an_error_and_the_connection_is_dropped(
        raw: Callable[[Handler], asyncio.Future[Raw]], body: bytes) -> None:
    srv = await raw(lambda head, c, k: (body if c == 0 else answer(b"ok"), c == 0))
    async with HttpClient() as http:
        resp = await http.get(f"{srv.base}/")
        with pytest.raises(HttpError, match=r"ended|closed"):
            await resp.read()
        resp.release()
        assert await (await http.get(f"{srv.base}/")).read() == b"ok"
        assert http.connections_made == 2


async def test_a_body_is_read_into_the_callers_buffer_and_never_past_its_end(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    srv = await raw(lambda head, c, k: (answer(data) + answer(b"next"), False))
    async with HttpClient() as http:
        resp = await http.get(f"{srv.base}/")
        assert resp.content_length == len(data)
        buf = bytearray(len(data) + 10)
        got = 0
        with memoryview(buf) as view:
            while n := await resp.readinto(view[got:]):
                got += n
        assert got == len(data) and bytes(buf[:got]) == data and buf[got:] == bytes(10)
        resp.release()
        # the bytes past the body (the next answer) were left on the connection
        assert await (await http.get(f"{srv.base}/")).read() == b"next"
        assert http.connections_made == 1


async def test_a_redirect_to_another_origin_drops_the_authorization(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    other = await raw(lambda head, c, k: (answer(b"there"), False))
    srv = await raw(lambda head, c, k: (
        answer(b"", "302 Found", Location=f"{other.base}/x") if b"/away" in head
        else answer(b"", "307 Temporary Redirect", Location="/away"), False))
    async with HttpClient() as http:
        resp = await http.get(f"{srv.base}/", headers={"Authorization": "Bearer T"})
        assert await resp.read() == b"there"
    assert [header(h, b"authorization") for h in srv.seen] == [b"Bearer T", b"Bearer T"]
    assert header(other.seen[0], b"authorization") is None


async def test_a_head_past_the_bound_is_refused(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    srv = await raw(lambda head, c, k: (answer(b"", X_Big="y" * MAX_HEAD), False))
    async with HttpClient() as http:
        with pytest.raises(HttpError, match="malformed"):
            await http.get(f"{srv.base}/")


# -- the hub client's resumable download on it

DATA = bytes(range(256)) * 1200  # 300 KiB


def _info(base: str) -> HubFile:
    return HubFile("abc", "f.bin", len(DATA), hashlib.sha256(DATA).hexdigest(),
                   f"{base}/f/abc", f"{base}/t/abc.torrent")


def _ranged(head: bytes, *, honour_range: bool = True) -> bytes:
    rng = header(head, b"range")
    if rng is None or not honour_range:
        return answer(DATA)
    start = int(rng.removeprefix(b"bytes=").rstrip(b"-"))
    return answer(DATA[start:], "206 Partial Content",
                  Content_Range=f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")


async def test_a_download_cut_mid_body_keeps_its_part_and_the_next_run_resumes(
        raw: Callable[[Handler], asyncio.Future[Raw]], tmp_path: Path) -> None:
    cut = 100_001
    srv = await raw(lambda head, c, k: (
        answer(DATA)[:-(len(DATA) - cut)] if c == 0 else _ranged(head), c == 0))
    async with HttpClient() as http:
        info = _info(srv.base)
        with pytest.raises(SwarmhubError, match="interrupted after 100,001 bytes"):
            await http_download(http, info, tmp_path)
        assert (tmp_path / "f.bin.part").read_bytes() == DATA[:cut]
        fetched = await http_download(http, info, tmp_path)
    assert fetched == len(DATA) - cut
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert header(srv.seen[1], b"range") == f"bytes={cut}-".encode()
    assert header(srv.seen[1], b"if-range") is not None


async def test_a_200_to_the_resume_range_starts_over_from_the_first_byte(
        raw: Callable[[Handler], asyncio.Future[Raw]], tmp_path: Path) -> None:
    """RFC 9110 §14.2: a server may ignore Range (or If-Range found the file changed) and
    send the whole file with 200: the part file is rewritten from byte 0, not appended."""
    (tmp_path / "f.bin.part").write_bytes(b"\xff" * 5000)  # not what the file begins with
    srv = await raw(lambda head, c, k: (_ranged(head, honour_range=False), False))
    async with HttpClient() as http:
        fetched = await http_download(http, _info(srv.base), tmp_path)
    assert header(srv.seen[0], b"range") == b"bytes=5000-"
    assert fetched == len(DATA)
    assert (tmp_path / "f.bin").read_bytes() == DATA


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_bodies_are_read_into_the_buffer_and_the_connection_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS under the BufferedProtocol (asyncio's SSL transport fills the caller's buffer);
    the certificate is checked: trusted here only because the test's CA is the context's."""
    await _https_round(tmp_path, monkeypatch)


def test_https_under_uvloop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on uvloop (what the CLI runs): its start_tls, its SSL transport."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_https_round(tmp_path, monkeypatch))


async def _https_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from swarmhub.discovery import httpget

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    data = os.urandom(3 << 20)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            for _ in range(10):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer(data))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(one, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/f"
    try:
        async with HttpClient() as http:  # the system CAs: this certificate is refused
            with pytest.raises(ssl.SSLCertVerificationError):
                await http.get(url)
        monkeypatch.setattr(httpget, "_tls", ssl.create_default_context(cafile=str(cert)))
        async with HttpClient() as http:
            for _ in range(2):
                assert await (await http.get(url)).read() == data
            assert http.connections_made == 1
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def _answering(raw: Callable[[Handler], asyncio.Future[Raw]], data: bytes
                     ) -> AsyncIterator[tuple[Response, Any]]:
    """A GET answered with ``data``: the response (its head read) and its connection."""
    srv = await raw(lambda head, c, k: (answer(data), False))
    async with HttpClient() as http:
        resp = await http.get(f"{srv.base}/")
        assert resp._conn is not None
        yield resp, resp._conn


async def test_a_body_nobody_reads_yet_is_held_bounded_and_arrives_intact(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    """Bytes arriving while no read waits are kept by the connection, which stops reading
    the socket once it holds ``_HIGH`` bytes (TCP then slows the server); reads in odd
    sizes then take them in order."""
    from swarmhub.discovery import httpget

    data = os.urandom(6 << 20)
    async with _answering(raw, data) as (resp, conn):
        for _ in range(100_000):  # bounded; ends on the state, not the clock
            if conn._paused:
                break
            await asyncio.sleep(0)
        held = len(conn._data)
        assert conn._paused and httpget._HIGH < held <= httpget._HIGH + httpget._SCRATCH
        for _ in range(1000):  # the server goes on writing: nothing more is read
            await asyncio.sleep(0)
        assert len(conn._data) == held
        got = bytearray()
        buf = memoryview(bytearray(99_991))
        while n := await resp.readinto(buf):
            got += buf[:n]
        assert got == data


async def test_between_reads_of_a_body_nothing_is_read_into_the_scratch(raw: Callable[
        [Handler], asyncio.Future[Raw]]) -> None:
    """A body is read in the caller's pieces (a web seed's 1 MiB runs) while it is busy
    between them: the bytes that come meanwhile wait in the kernel for its next read,
    which takes them straight into its buffer (held here, they were copied twice more:
    with 1 MiB held, 3/4 of a 64 MiB web-seed body)."""
    data = os.urandom(8 << 20)
    async with _answering(raw, data) as (resp, conn):
        head_rest = len(conn._data)  # what came with the head, before the body was asked
        got = bytearray()
        buf = memoryview(bytearray(1 << 20))
        held = 0
        while n := await resp.readinto(buf):
            got += buf[:n]
            for _ in range(50):  # busy with the run: the server goes on writing
                await asyncio.sleep(0)
            held = max(held, len(conn._data))
        assert got == data
        assert held <= head_rest  # only the head's tail was ever held


async def test_a_busy_hub_says_when_to_retry_and_where_the_torrent_is(
        raw: Callable[[Handler], asyncio.Future[Raw]], tmp_path: Path) -> None:
    from swarmhub.client import HubBusy

    srv = await raw(lambda head, c, k: (answer(
        b'{"error": "busy"}', "503 Service Unavailable", Retry_After=7,
        Link='<http://elsewhere/t/abc.torrent>; rel="alternate"; type="application/x-bittorrent"'),
        False))
    async with HttpClient() as http:
        with pytest.raises(HubBusy) as busy:
            await http_download(http, _info(srv.base), tmp_path)
    assert busy.value.retry_after == 7.0
    assert busy.value.torrent_url == "http://elsewhere/t/abc.torrent"


def test_cancelling_https_connects_leaves_no_unread_tls_failure_under_uvloop() -> None:
    """An https:// GET to a plain-HTTP server, cancelled after 1-6 turns of the loop (a
    timeout, or a request given up: web seeds, trackers at shutdown, the hub client), is
    cancelled at every step of its connect. With uvloop's ``create_connection(ssl=...)`` a
    cancel between the TCP connect and the handshake left the handshake's failure in a
    future nobody read ("Future exception was never retrieved" + traceback): 53 of the 60
    cancels after 2 or 3 turns did, none at other steps."""
    outcomes: dict[str, int] = {}

    async def tries(base: str) -> None:
        for i in range(300):
            async with HttpClient() as http_client:
                task = asyncio.ensure_future(http_client.get(f"{base}/"))
                for _ in range(1 + i % 6):  # on loopback the TCP connect took 2-3
                    await asyncio.sleep(0)
                task.cancel()
                (result,) = await asyncio.gather(task, return_exceptions=True)
                name = type(result).__name__
                outcomes[name] = outcomes.get(name, 0) + 1

    assert unread_failures_under_uvloop(tries) == [], outcomes


def _upload(size: int, chunk: int, sent: list[int]) -> Upload:
    """``size`` bytes in chunks of ``chunk`` (bytes ``i % 251``), made as they are asked
    for; ``sent`` counts the chunks handed out."""
    async def chunks() -> AsyncGenerator[bytes, None]:
        for start in range(0, size, chunk):
            sent.append(start)
            yield bytes(i % 251 for i in range(start, min(size, start + chunk)))
    return Upload(size, chunks)


async def _body_server(answer_early: bool) -> tuple[asyncio.Server, list[bytes]]:
    """Reads each request's head and (unless ``answer_early``: then it answers 403 and
    closes at once) its Content-Length body, and answers with the body's SHA-1."""
    bodies: list[bytes] = []

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(10):  # bounded: a test sends a few requests
                head = await reader.readuntil(b"\r\n\r\n")
                if answer_early:
                    writer.write(answer(b'{"error": "no"}', "403 Forbidden", Connection="close"))
                    await writer.drain()
                    return
                body = await reader.readexactly(int(header(head, b"content-length") or 0))
                bodies.append(body)
                writer.write(answer(hashlib.sha1(body).hexdigest().encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(one, "127.0.0.1", 0), bodies


async def test_a_post_body_goes_whole_and_the_connection_is_kept() -> None:
    server, bodies = await _body_server(answer_early=False)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sent: list[int] = []
    try:
        async with HttpClient() as http:
            async with await http.post(f"{base}/up", _upload(3_000_001, 1 << 20, sent)) as r:
                digest = (await r.read()).decode()
            async with await http.post(f"{base}/up", _upload(10, 4, [])) as r:
                await r.read()
            assert http.connections_made == 1
    finally:
        server.close()
        await server.wait_closed()
    assert len(sent) == 3 and len(bodies[0]) == 3_000_001
    assert bodies[0] == bytes(i % 251 for i in range(3_000_001))
    assert digest == hashlib.sha1(bodies[0]).hexdigest()


async def test_an_answer_before_the_body_is_sent_ends_the_sending_and_is_the_answer() -> None:
    """A server refusing a request from its head alone (a bad token) and closing: the
    client stops writing and reads the refusal (writing on got a broken connection)."""
    server, _ = await _body_server(answer_early=True)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sent: list[int] = []
    try:
        async with HttpClient() as http, \
                await http.post(f"{base}/up", _upload(256 << 20, 256 << 10, sent)) as r:
            assert r.status == 403
            assert await r.read() == b'{"error": "no"}'
    finally:
        server.close()
        await server.wait_closed()
    assert len(sent) < 1024  # not the whole 256 MiB
