"""Hostile and careless input against a live hub: every answer a 4xx JSON error, no
traceback, no server path; the transfer cap holds for every range form; duplicate
uploads racing each other; wrong tokens logged (without the token) and slowed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from test_api import Live, live_hub

from swarmhub.hub.limits import LIMITS_KEY


async def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def live(tmp_path: Path, hub_backend: dict[str, str]) -> AsyncIterator[Live]:
    async for x in live_hub(tmp_path, max_upload_size=8 << 20, **hub_backend):
        yield x


async def _publish(live: Live, data: bytes, name: str) -> dict[str, str]:
    pub, _ = await live.token("publisher")
    status, body = await live.publish(data, name, pub)
    assert status == 201, body
    return dict(body)


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_every_range_form_counts_against_max_transfers(tmp_path: Path) -> None:
    async for live in live_hub(tmp_path, max_transfers=1, upload_rate=100_000.0):
        await _check_range_forms_are_capped(live)


async def _check_range_forms_are_capped(live: Live) -> None:
    f = await _publish(live, os.urandom(400_000), "big.bin")
    url = f"{live.url}/f/{f['id']}/big.bin"

    async def hold() -> bytes:
        async with live.http.get(url) as r:
            return await r.read()

    holder = asyncio.create_task(hold())  # 400 kB at 100 kB/s: ~4 s in flight
    try:
        await _wait_for(lambda: live.hub.limiter.transfers_active == 1)
        for value in ("bytes=0-", "bytes=-1000", "bytes=0-10,20-30", "bytes=5-9"):
            async with live.http.get(url, headers={"Range": value}) as r:
                body = await r.json()
                assert r.status == 503, (value, r.status)
                assert r.headers["Retry-After"] and "busy" in body["error"]
        assert live.hub.limiter.transfers_active == 1
    finally:
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder


async def test_malformed_inputs_are_4xx_json_without_traceback(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    f = await _publish(live, os.urandom(5000), "r.bin")
    url = f"{live.url}/f/{f['id']}/r.bin"
    async with live.http.get(url, headers={"Range": "bytes=" + "9" * 4300 + "-"}) as r:
        assert r.status == 416 and "error" in await r.json()
    async with live.http.get(url, headers={"Range": "bytes=0-" + "9" * 4300}) as r:
        assert r.status == 206 and len(await r.read()) == 5000  # clamped to the end
    async with live.http.get(url, headers={"Range": "bytes=-" + "9" * 4300}) as r:
        assert r.status == 206 and len(await r.read()) == 5000
    for query in ("limit=²", "offset=٣", "limit=" + "1" * 5000):
        async with live.http.get(f"{live.url}/api/files?{query}") as r:
            assert r.status == 400, query
            assert "must be an integer" in (await r.json())["error"]
    nested = "[" * 100_000 + "]" * 100_000
    async with live.http.post(
        f"{live.url}/api/collections",
        data=nested,
        headers={**live.auth(live.admin), "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400 and "nested too deeply" in (await r.json())["error"]
    pub, _ = await live.token("publisher")
    async with live.http.post(
        f"{live.url}/api/files",
        data=b"x",
        headers={**live.auth(pub), "Content-Type": "multipart/form-data"},  # no boundary
    ) as r:
        assert r.status == 400 and "multipart" in (await r.json())["error"]
    _no_traceback(caplog)


async def test_empty_file_publish_error_shows_no_server_path(live: Live) -> None:
    pub, _ = await live.token("publisher")
    status, body = await live.publish(b"", "empty.txt", pub)
    assert status == 400 and "empty" in body["error"]
    assert str(live.data_dir) not in json.dumps(body) and "/" not in body["error"]
    blobs, tmp = live.stored()
    assert blobs == [] and tmp == []


async def test_concurrent_duplicate_uploads_get_200_not_409(live: Live) -> None:
    pub, _ = await live.token("publisher")
    data = os.urandom(3 << 20)
    results = await asyncio.gather(*(live.publish(data, "same.iso", pub) for _ in range(6)))
    statuses = sorted(status for status, _ in results)
    assert statuses[0] == 200 and set(statuses) <= {200, 201}, results
    assert statuses.count(201) == 1, statuses
    assert len({body["id"] for _, body in results}) == 1
    blobs, tmp = live.stored()
    assert len(blobs) == 1 and tmp == []
    assert not list((live.data_dir / "seed").iterdir())[1:]  # one seed folder


def _from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_failed_logins_are_logged_without_the_token_and_slowed(
    live: Live, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    throttle = live.app[LIMITS_KEY].logins
    # Slots 5 s apart, at most 7.5 s ahead. (The hub's shutdown waits for the sleeping
    # handler of the cancelled request: keep the delay short.)
    throttle.free_failures, throttle.base_delay, throttle.max_delay = 1, 5.0, 5.0
    throttle.max_wait = 7.5
    # The throttle sees one instant: its backlog does not drain while a loaded machine
    # serves the requests below (the handler's own sleep is real, and cancelled).
    at = asyncio.get_running_loop().time()
    for name in ("wait", "failed", "retry_after", "backlog"):
        real = getattr(throttle, name)
        monkeypatch.setattr(throttle, name, lambda ip, now, real=real: real(ip, at))
    wrong = "not-a-token-" + os.urandom(8).hex()
    reader, _ = await live.token("reader")
    me = f"{live.url}/api/me"
    async with _from("127.0.0.5") as guesser, _from("127.0.0.6") as other:
        for _ in range(2):
            async with guesser.get(me, headers=live.auth(wrong)) as r:
                assert r.status == 403
        # The third attempt waits its slot (5 s); nothing else waits with it.
        waiting = asyncio.create_task(guesser.get(me, headers=live.auth(wrong)))
        loop = asyncio.get_running_loop()
        await _wait_for(lambda: throttle.backlog("127.0.0.5", loop.time()) > 7.5)
        async with other.get(me, headers=live.auth(reader)) as r:
            assert r.status == 200
        async with other.get(me, headers=live.auth(wrong)) as r:
            assert r.status == 403
        assert not waiting.done()
        # The next slot is more than max_wait away: refused at once.
        async with guesser.get(me, headers=live.auth(wrong)) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert "failed login from 127.0.0.5" in caplog.text
    assert "failed login from 127.0.0.6" in caplog.text
    assert wrong not in caplog.text
