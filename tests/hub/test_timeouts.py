"""Idle, slow and stalled connections are closed; a stalled upload leaves no temp file;
running out of descriptors is one log line per second, not a traceback per socket.

The deadlines are configured small and the tests poll for the resulting state
(connection closed, temp file gone) with generous bounds, never for elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hubproc import start_hub_process
from test_api import Live, live_hub

from swarmhub.hub.connections import install_fd_exhaustion_handler

BOUND = 20.0  # seconds any expected close may take on a loaded machine


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async for x in live_hub(
        tmp_path, header_timeout=0.3, keepalive_timeout=0.6, body_timeout=0.3
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
