"""Running a command's coroutine: Ctrl-C and SIGTERM cancel it so cleanup code runs.

Cleanup code then waits for what it stopped (:func:`settle`) without eating that
cancellation itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Coroutine
from typing import Any

__all__ = ["INTERRUPTED", "run_cancellable", "settle"]

#: Exit status of a command stopped by Ctrl-C or SIGTERM (after its cleanup ran).
INTERRUPTED = 130


def run_cancellable(coro: Coroutine[Any, Any, int], *, use_uvloop: bool = True) -> int:
    """Run ``coro`` to completion and return its exit status.

    A signal cancels the task instead of killing the process, so ``async with`` blocks
    save resume data and close sockets. uvloop is used when installed and wanted: it makes
    the peer engine faster, but it has no ``loop.sendfile``, so the hub (whose origin
    serves files zero-copy) asks for the standard loop.
    """

    async def wrapper() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        except asyncio.CancelledError:
            return INTERRUPTED

    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(wrapper())
    return asyncio.run(wrapper())


async def settle(aw: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait (at most ``timeout`` s) for ``aw`` to end, whatever its outcome.

    Shutdown waits for tasks it cancelled or that may fail, and their errors are not its
    business. A cancellation aimed at the waiter itself (Ctrl-C while a torrent stops) is,
    and is re-raised: a plain ``suppress(BaseException)`` swallowed it, and the cancelled
    caller ran on. Wrap ``aw`` in :func:`asyncio.shield` to keep it running on timeout.
    """
    try:
        await asyncio.wait_for(aw, timeout)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        pass
