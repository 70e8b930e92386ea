"""``settle``: shutdown waits for what it stopped, but keeps its own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from swarmhub.aio import settle


async def test_settle_ignores_the_outcome_of_what_it_waits_for() -> None:
    async def fails() -> None:
        raise OSError("disk gone")

    cancelled = asyncio.ensure_future(asyncio.Event().wait())
    cancelled.cancel()
    await settle(fails())
    await settle(cancelled)
    assert cancelled.cancelled()


async def test_settle_gives_up_after_the_timeout() -> None:
    never = asyncio.ensure_future(asyncio.Event().wait())
    await settle(asyncio.shield(never), 0.01)
    assert not never.done()  # shielded: still running, the caller decides
    never.cancel()


async def test_settle_does_not_swallow_the_waiters_own_cancellation() -> None:
    started = asyncio.Event()
    after: list[str] = []

    async def waiter() -> None:
        started.set()
        await settle(asyncio.Event().wait())
        after.append("ran on as if not cancelled")

    task = asyncio.ensure_future(waiter())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == []
