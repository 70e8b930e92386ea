"""Connection hygiene for the hub's HTTP server: a request-header deadline, and calm
handling of file-descriptor exhaustion.

Why: aiohttp bounds an idle keep-alive connection (``keepalive_timeout``) but gives a
client all the time it wants to finish a request's head, so a slowloris client that
sends a header line every few seconds holds a connection, a descriptor and some memory
forever; 500 of them exhaust a 1,024-descriptor process. :class:`GuardedRequestHandler`
closes a connection whose request head is not complete ``header_timeout`` seconds after
the connection opened, or after the first byte of the next request on a keep-alive
connection (nginx's ``client_header_timeout``). Request bodies have their own progress
deadline where they are read (``HubConfig.body_timeout``).

When the process runs out of descriptors, asyncio stops accepting for a second and
reports "socket.accept() out of system resource" with a full traceback through the
loop's exception handler, and every failed ``open``/``socket`` on the way logs its own.
:func:`install_fd_exhaustion_handler` turns the loop's reports into one warning per
second (with a count of what it folded), and :func:`is_fd_exhaustion` lets handlers map
EMFILE/ENFILE to 503 instead of a traceback.

The handler relies on two private attributes of aiohttp's ``RequestHandler``
(``_request_count``, ``_waiter``; aiohttp 3.9 to 3.14); a test drives it end to end.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.web_protocol import RequestHandler

__all__ = [
    "FD_ERRNOS",
    "GuardedRequestHandler",
    "install_fd_exhaustion_handler",
    "is_fd_exhaustion",
]

log = logging.getLogger(__name__)

#: errno values that mean "no descriptor / buffer for a new connection right now".
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_fd_exhaustion(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the process or system running out of descriptors."""
    return isinstance(exc, OSError) and exc.errno in FD_ERRNOS


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol handler with a deadline on each request's head."""

    def __init__(self, *args: Any, header_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        if self._header_timeout > 0 and self._header_deadline is None:
            self._header_deadline = self._loop.call_later(
                self._header_timeout, self._header_deadline_passed
            )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.debug("closing %s: no complete request head in %g s", peer, self._header_timeout)
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a request head was parsed completely
            self._disarm_header_deadline()
        elif data and self._waiter is not None:  # idle keep-alive: a new request starts
            self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


class _FoldedReports:
    """The loop exception handler: descriptor exhaustion once per second, rest unchanged."""

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
        every: float,
        clock: Callable[[], float],
    ) -> None:
        self.previous = previous
        self.every = every
        self.clock = clock
        self.last = -float("inf")
        self.folded = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _retry_after_close(context):
            log.debug("accept retry after the listening socket closed: ignored")
            return
        if not is_fd_exhaustion(context.get("exception")):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = self.clock()
        if now - self.last < self.every:
            self.folded += 1
            return
        exc = context["exception"]
        more = f" ({self.folded} more since the last report)" if self.folded else ""
        log.warning(
            "out of file descriptors (%s): not accepting new connections for a moment%s",
            exc.strerror or exc,
            more,
        )
        self.last, self.folded = now, 0


def _retry_after_close(context: dict[str, Any]) -> bool:
    """asyncio's accept retry firing after shutdown closed the listening socket.

    On EMFILE asyncio stops accepting and schedules ``_start_serving`` a second later, but
    closing the server does not cancel that timer: at shutdown it then fails on fd -1. The
    socket is gone on purpose, so this is not an error worth a traceback.
    """
    callback = getattr(context.get("handle"), "_callback", None)
    return (
        isinstance(context.get("exception"), ValueError)
        and getattr(callback, "__name__", "") == "_start_serving"
    )


def install_fd_exhaustion_handler(
    loop: asyncio.AbstractEventLoop,
    *,
    every: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Fold the loop's descriptor-exhaustion reports into one log line per ``every`` s."""
    previous = loop.get_exception_handler()
    if isinstance(previous, _FoldedReports):
        return
    loop.set_exception_handler(_FoldedReports(previous, every, clock))
