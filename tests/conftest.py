"""Shared test helpers: strict skipping, free ports, libtorrent availability."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import shutil
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings

from interop.harness import free_port  # noqa: F401  (tests import it from conftest)

STRICT = os.environ.get("SWARMHUB_STRICT") == "1"

# Hypothesis tests check what an input does, not how long it takes: its default 200 ms
# deadline per example failed test_any_scrape_body_parses_or_raises_tracker_error at
# load 39 (530 ms for an 11-byte body), a verdict of the machine's load, not the code's.
settings.register_profile("swarmhub", deadline=None)
settings.load_profile("swarmhub")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """Name the failed tests again, last, one line each.

    Why: a CI log is read from its tail, and with CI set pytest truncates nothing: one
    failed comparison of two byte strings printed ~8,000 lines of diff in the short
    summary, and the test's name scrolled out of the part of the log that was kept."""
    try:
        return (yield)
    finally:
        bad = [r.nodeid for key in ("failed", "error")
               for r in terminalreporter.stats.get(key, [])]
        if bad:
            terminalreporter.write_line(f"{len(bad)} failed or in error:")
            for nodeid in bad:
                terminalreporter.write_line(f"  {nodeid}")


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (benches are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # a dataclass in it looks its module up there
    spec.loader.exec_module(mod)
    return mod


def need(condition: bool, why: str) -> None:
    """Skip when ``condition`` is false; under SWARMHUB_STRICT=1 (CI) fail instead."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"SWARMHUB_STRICT=1 and a requirement is missing: {why}")
    pytest.skip(why)


def need_tool(name: str) -> str:
    """Path of a command-line tool, or skip/fail as :func:`need` does."""
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed (make setup installs it)")
    assert path is not None
    return path


async def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` on the event loop until it holds; ``timeout`` is a hang guard, not a
    margin (the loop keeps running, so an in-process hub or session makes progress)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


def _answer_at_once(listener: socket.socket) -> None:
    """Until ``listener`` is closed: accept, write a plain HTTP answer at once (before the
    client's first bytes), close."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def unread_failures_under_uvloop(tries: Callable[[str], Awaitable[None]]) -> list[object]:
    """Run ``tries(base)`` under uvloop (skip without it), ``base`` the https:// URL of a
    plain-HTTP server on 127.0.0.1 that answers as soon as it accepts (so the TLS
    handshake fails right after the TCP connect); return what the loop's exception
    handler was given ("Future exception was never retrieved"...), collected after a last
    turn and a garbage collection."""
    uvloop = pytest.importorskip("uvloop")
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=_answer_at_once, args=(listener,), daemon=True)
    thread.start()
    reports: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
        await tries(f"https://127.0.0.1:{listener.getsockname()[1]}")
        await asyncio.sleep(0)
        gc.collect()

    try:
        uvloop.run(main())
    finally:
        with contextlib.suppress(OSError):  # wakes the accept (Linux); close alone may not
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)
    return reports


# Hard network rule: no test ever reaches the public DHT. Every swarmhub process a test
# starts inherits these: the DHT is off unless a test turns it on with local bootstrap
# nodes, and even then a DHT node drops datagrams to anything outside 127.0.0.0/8.
os.environ["SWARMHUB_DHT"] = "0"
# Local service discovery multicasts to the LAN: off in every test; only tests that build
# their own network namespaces turn it on for the processes they start there.
os.environ["SWARMHUB_LSD"] = "0"
os.environ["SWARMHUB_DHT_LOCAL_ONLY"] = "1"


@pytest.fixture(scope="session")
def postgres() -> Any:
    """One PostgreSQL 15 server for the session (tests take a database each)."""
    from servers import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Any:
    """One Redis server for the session (tests take a db each)."""
    from servers import redis_server as start

    with start() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Any:
    """One S3 server (rclone) for the session (tests take a bucket each)."""
    from servers import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(params=["embedded", pytest.param("shared", marks=pytest.mark.slow)])
def hub_backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """HubConfig fields for a hub on embedded defaults, or on the shared servers that
    several hub processes can use (PostgreSQL catalog, Redis swarm state, S3 blobs)."""
    if request.param == "embedded":
        return {}
    return {"db": request.getfixturevalue("postgres").new_database(),
            "swarm_state": request.getfixturevalue("redis_server").new_url(),
            "store": request.getfixturevalue("s3").new_url()}
