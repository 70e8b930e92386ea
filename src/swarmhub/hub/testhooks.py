"""A test-only hook that freezes a publish at a named step, so a test can ``kill -9`` there.

Why: the crash tests must kill the hub *in* a given state (blob stored but no catalog
row, row written but not seeded...), and a timer cannot hit that reliably. With
``SWARMHUB_TEST_PAUSE_AT=<point>:<marker file>`` in its environment, the hub writes its
PID to the marker file when a publish reaches ``<point>`` and then waits forever (the
request, not the hub: other requests are still served). Without the variable, which is
the case outside tests, :func:`pause_point` returns at once.

Points, in the order a publish passes them (see ``api._catalogue``): ``hashing`` (blob
stored and seed link made, pieces about to be hashed), ``torrent`` (torrents made, no
catalog row yet), ``catalog`` (row written, not seeded yet), ``seeding`` (seeder
started on it, answer not sent yet).
"""

from __future__ import annotations

import asyncio
import os

__all__ = ["ENV", "pause_point"]

ENV = "SWARMHUB_TEST_PAUSE_AT"


async def pause_point(point: str) -> None:
    """Block forever at ``point`` when the test hook names it; otherwise return."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, marker = spec.partition(":")
    if name != point or not marker:
        return
    with open(marker, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    await asyncio.Event().wait()
