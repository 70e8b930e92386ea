"""Background jobs of one torrent: tasks whose failure is logged, never fatal.

Apart from the driver (:mod:`swarmhub.engine.torrent`): a bug in one loop (the web seed,
an upload, a verify) must not take the torrent down, and stopping must wait for what
is still in flight; that bookkeeping is the same for every kind of job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from swarmhub.aio import settle

__all__ = ["Jobs"]

log = logging.getLogger(__name__)


class Jobs:
    """The periodic jobs (:meth:`run`) and one-off tasks (:meth:`spawn`) of ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, jobs: Iterable[Callable[[], Awaitable[None]]]) -> None:
        """Run ``jobs`` until cancelled; each job's failure is logged, not fatal."""
        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(self._guard(job))

    async def _guard(self, job: Callable[[], Awaitable[None]]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await job()
            except Exception:  # a bug in one job must not take the torrent down
                name = getattr(job, "__name__", None) or repr(job)
                log.exception("%s: background job %s failed", self.name, name)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` as a task of its own, kept until it ends."""
        task: asyncio.Task[Any] = asyncio.ensure_future(self._guard(lambda: coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait for the spawned tasks (each at most ``timeout`` seconds)."""
        for t in list(self._tasks):
            await settle(asyncio.shield(t), timeout)
