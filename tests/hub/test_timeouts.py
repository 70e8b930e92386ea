"""Idle, slow and stalled connections are closed; a stalled upload leaves no temp file;
running out of descriptors is one log line per second, not a traceback per socket.

The deadlines are configured small and the tests poll for the resulting state
(connection closed, temp file gone) with generous bounds, never for elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hubprocess import start_hub_process
from test_api import Live, live_hub

from swarmhub.hub.connections import install_fd_exhaustion_handler

BOUND = 20.0  # seconds any expected close may take on a loaded machine


@pytest.fixture
async def live(tmp_path: Path, hub_backend: dict[str, str]) -> AsyncIterator[Live]:
    async for x in live_hub(
        tmp_path, header_timeout=0.3, keepalive_timeout=0.6, body_timeout=0.3, **hub_backend
    ):
        yield x


async def _connect(live: Live) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(live.url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (bounded wait)."""
    return await asyncio.wait_for(reader.read(), BOUND)


async def _wait_for(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_connection_that_sends_nothing_is_closed(live: Live) -> None:
    reader, writer = await _connect(live)
    try:
        assert await _closed_by_server(reader) == b""
    finally:
        writer.close()


async def test_a_slowloris_request_head_is_closed(live: Live) -> None:
    reader, writer = await _connect(live)
    try:
        writer.write(b"GET /api/files HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # a header line now and then, never the blank line
            n = 0
            while True:
                await asyncio.sleep(0.05)
                writer.write(f"X-Slow-{n}: 1\r\n".encode())
                n += 1

        dripping = asyncio.create_task(trickle())
        try:
            # closed with our latest header lines unread, the kernel may send a RST
            with contextlib.suppress(ConnectionResetError):
                assert await _closed_by_server(reader) == b""
        finally:
            dripping.cancel()
    finally:
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_a_response(live: Live) -> None:
    reader, writer = await _connect(live)
    try:
        writer.write(b"GET /api/files HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" not in head.lower()
        # The body follows; then the server closes the idle connection by itself.
        rest = await _closed_by_server(reader)
        assert b'"files"' in rest
    finally:
        writer.close()


async def test_a_stalled_upload_is_dropped_and_its_temp_file_removed(live: Live) -> None:
    pub, _ = await live.token("publisher")
    boundary = "XyZ"
    head = (
        "POST /api/files HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {pub}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 10000000\r\n\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="slow.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    reader, writer = await _connect(live)
    try:
        writer.write(head + os.urandom(200_000))  # then nothing more
        await writer.drain()
        answer = await _closed_by_server(reader)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"no upload progress" in answer
    finally:
        writer.close()
    await _wait_for(lambda: live.stored() == ([], []))


async def test_a_stalled_json_body_is_dropped(live: Live) -> None:
    head = (
        "POST /api/collections HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {live.admin}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    ).encode()
    reader, writer = await _connect(live)
    try:
        writer.write(head)
        answer = await _closed_by_server(reader)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        writer.close()


def test_fd_exhaustion_reports_are_folded_to_one_line_per_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    loop = asyncio.new_event_loop()
    try:
        install_fd_exhaustion_handler(loop, clock=lambda: now[0])
        exc = OSError(24, "Too many open files")
        with caplog.at_level(logging.WARNING):
            for _ in range(500):
                loop.call_exception_handler({"message": "accept failed", "exception": exc})
            now[0] += 1.5
            loop.call_exception_handler({"message": "accept failed", "exception": exc})
            loop.call_exception_handler({"message": "other", "exception": ValueError("x")})
    finally:
        loop.close()
    folded = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(folded) == 2 and not any(r.exc_info for r in folded)
    assert "499 more" in folded[1].getMessage()
    assert any("other" in r.getMessage() for r in caplog.records)  # others pass through


def test_an_accept_retry_after_shutdown_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio retries accept 1 s after EMFILE even if the server closed meanwhile."""
    loop = asyncio.new_event_loop()

    def _start_serving() -> None:
        raise ValueError("Invalid file descriptor: -1")

    try:
        install_fd_exhaustion_handler(loop)
        with caplog.at_level(logging.WARNING):
            loop.call_soon(_start_serving)
            loop.call_soon(loop.stop)
            loop.run_forever()
            loop.call_exception_handler({"message": "other", "exception": ValueError("x")})
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == ["other"], caplog.records


def _hold(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


@pytest.mark.slow
def test_out_of_descriptors_sheds_connections_quietly_and_recovers(tmp_path: Path) -> None:
    hub = start_hub_process(
        tmp_path, "-v", "--header-timeout", "3", "--keepalive-timeout", "3", nofile=256
    )
    socks: list[socket.socket] = []
    try:
        socks = _hold(hub.port, 400)  # more than the hub has descriptors for
        deadline = time.monotonic() + BOUND
        while "out of file descriptors" not in hub.log_text():
            assert time.monotonic() < deadline, hub.log_text()[-3000:]
            time.sleep(0.05)
        for s in socks:
            s.close()
        socks = []
        # The idle connections it did accept time out; then it serves again.
        deadline = time.monotonic() + BOUND
        while True:
            try:
                if _get(hub.port, "/api/files").startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, hub.log_text()[-3000:]
            time.sleep(0.1)
    finally:
        for s in socks:
            s.close()
        hub.proc.stop()
    text = hub.log_text()
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if "out of file descriptors" in line]
    assert 1 <= len(lines) <= 2 + int(time.monotonic() - hub.proc.started)


def test_sweep_ends_only_transfers_whose_client_acknowledges_nothing() -> None:
    from swarmhub.hub.origin import OriginLimiter

    lim = OriginLimiter(stall_timeout=10.0)
    stuck, moving, hub_bound = asyncio.Transport(), asyncio.Transport(), asyncio.Transport()
    acked: dict[asyncio.BaseTransport, int | None] = {stuck: 5, moving: 5, hub_bound: None}
    ended: list[asyncio.BaseTransport] = []
    for t in acked:
        lim.watch(t, 0.0, lambda t=t: ended.append(t))
    for now in (1.0, 6.0, 11.0, 12.0):
        acked[moving] = int(now)  # the client keeps acknowledging bytes
        lim.sweep(now, acked.get)
    # hub_bound: nothing waits for that client (the hub is the slow side): never ended.
    assert ended == [stuck] and lim.stalled_total == 1
    lim.unwatch(moving)
    lim.unwatch(hub_bound)
    assert lim.sweep(100.0, acked.get) == 0


async def test_a_client_that_stops_reading_frees_its_transfer_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async for live in live_hub(
        tmp_path, max_transfers=1, send_timeout=0.5, max_upload_size=64 << 20
    ):
        await _check_stalled_download_is_aborted(live)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def _check_stalled_download_is_aborted(live: Live) -> None:
    pub, _ = await live.token("publisher")
    data = os.urandom(48 << 20)  # far more than the socket buffers hold
    status, f = await live.publish(data, "big.bin", pub)
    assert status == 201, f
    path = f["url"].split(live.url, 1)[1]
    limiter = live.hub.limiter
    reader, writer = await _connect(live)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert head.startswith(b"HTTP/1.1 200")
        # ...and read nothing more: the hub's sendfile waits on a full window.
        await _wait_for(lambda: limiter.stalled_total == 1 and limiter.transfers_active == 0)
        async with live.http.get(f["url"]) as r:  # the slot is free again
            assert r.status == 200 and await r.read() == data
    finally:
        writer.close()
