"""Events for Server-Sent Events subscribers: a bounded queue per subscriber.

A slow subscriber loses its oldest events (and is told how many) rather than making the
daemon buffer without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventBus", "Subscription"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``kind`` is the SSE event name, ``data`` its JSON payload."""

    id: int
    kind: str
    data: dict[str, Any]

    def sse(self) -> bytes:
        """The event in the text/event-stream format (one ``data:`` line of JSON)."""
        body = json.dumps(self.data, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.kind}\ndata: {body}\n\n".encode()


class Subscription:
    """One subscriber's queue; ``None`` in it means the daemon is shutting down."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(size)
        self.dropped = 0

    def put(self, event: Event | None) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        self._size = queue_size

    def emit(self, kind: str, /, **data: Any) -> Event:
        event = Event(next(self._ids), kind, {"time": round(time.time(), 3), **data})
        for sub in self._subs:
            sub.put(event)
        return event

    def subscribe(self) -> Subscription:
        sub = Subscription(self._size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        """End every subscriber's stream (the daemon is stopping)."""
        for sub in self._subs:
            sub.put(None)
