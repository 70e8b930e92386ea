"""The lab's start gate: every client of a run starts its interpreter, says it is ready,
then waits until the runner opens the gate, so a swarm's completion times count from one
instant for every peer and for every client kind (ours and libtorrent alike).

Why: a lab run starts 16 or 32 interpreters at once on a machine with few cores. Without
the gate, the first peer to finish its imports sets the run's start and the last one joins
seconds later, so the measure included the machine's start-up queue (and more of it for
the client with the heavier imports), not the swarm. The client side is two calls:
:func:`gate_path` (is there a gate?) and :func:`wait_gate` (say ready, wait); the runner
writes the file. ``tests/interop/ltpeer.py`` does the same with the same variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["GATE_ENV", "GATE_EVENT", "gate_path", "wait_gate"]

#: The file whose creation opens the gate (set by the lab runner for its clients only).
GATE_ENV = "SWARMHUB_LAB_GATE"
#: The JSON line (``{"event": "gate"}``) a client prints once it waits at the gate.
GATE_EVENT = "gate"
_POLL_S = 0.005


def gate_path() -> Path | None:
    """The gate file this process must wait for, or None outside a gated lab run."""
    value = os.environ.get(GATE_ENV)
    return Path(value) if value else None


async def wait_gate(path: Path, timeout: float, warm: Iterable[str] = ()) -> None:
    """Import ``warm`` (modules the run will need anyway: imported here, their cost stays
    out of the timed run), print the gate line, then wait until ``path`` exists.

    Bounded: after ``timeout`` s the client goes on (the runner has given up by then and
    reports the host as failed; a client must never hang on a lab that died)."""
    for name in warm:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    print(json.dumps({"event": GATE_EVENT}), flush=True)
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(_POLL_S)
