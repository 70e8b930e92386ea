"""``swarmhub hub --workers N``: N hub processes on one port (SO_REUSEPORT), one machine.

The kernel spreads new connections over the processes; each serves HTTP, the tracker and
the API on its own event loop and core. What they must agree on is shared the way
several hubs share it (see ``hub.backends``): the catalog (the data folder's SQLite file,
which each worker polls for the others' writes, or PostgreSQL), the swarms (Redis: in
memory each worker would keep a swarm of its own, so ``--swarm-state redis://`` is
required) and the blobs (the data folder's blob store, or S3).

Worker 0 is the data folder's own hub: it holds ``DATA/hub.lock``, runs the start-up
check and the embedded seeder, and starts before the others. Workers 1..N-1 each have a
folder of their own under ``DATA/workers/`` (their lock, uploads in flight), write blobs
into the shared store and run no seeder: worker 0's seeder picks up what they publish
from the catalog. If any worker exits, the others are stopped and the command exits
non-zero: a supervisor (systemd...) restarts the whole set.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import time
from typing import Any

from swarmhub.errors import SwarmhubError

__all__ = ["run_workers", "worker_configs"]

log = logging.getLogger(__name__)

#: Seconds between a worker's checks of a shared SQLite catalog for the others' writes.
SQLITE_POLL = 0.25


def worker_configs(config: Any, workers: int) -> list[Any]:
    """The :class:`~swarmhub.hub.api.HubConfig` of each worker (index 0 first)."""
    if workers == 1:
        return [config]
    if config.swarm_state is None:
        raise SwarmhubError(
            "--workers needs a shared swarm state: each process would otherwise track a "
            "swarm of its own; pass --swarm-state redis://HOST:PORT/DB")
    sqlite = config.db is None or config.db.startswith("sqlite:")
    common: dict[str, Any] = {"reuse_port": True,
                              "catalog_poll": SQLITE_POLL if sqlite else 0.0}
    first = dataclasses.replace(config, **common)
    db = config.db or f"sqlite:{config.data_dir / 'catalog.sqlite3'}"
    blob_dir = None if config.store else (config.blob_dir or config.data_dir)
    rest = [
        dataclasses.replace(config, data_dir=config.data_dir / "workers" / str(i), db=db,
                            blob_dir=blob_dir, peer_listen=None, **common)
        for i in range(1, workers)
    ]
    return [first, *rest]


def _worker(config: Any, host: str, port: int, index: int,
            ready: multiprocessing.synchronize.Event) -> None:
    from swarmhub.aio import run_cancellable
    from swarmhub.hub.commands import run_hub
    from swarmhub.hub.redact import install as redact_logs

    os.umask(0o077)
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    redact_logs()  # as in the single-process hub: no token or passkey reaches the log
    try:
        code = run_cancellable(run_hub(config, host, port, ready=ready,
                                       show_token=index == 0), use_uvloop=False)
    except (OSError, SwarmhubError) as exc:
        print(f"error: worker {index} cannot start: {exc}", flush=True)
        code = 1
    raise SystemExit(code)


def run_workers(config: Any, host: str, port: int, workers: int) -> int:
    """Start the workers (0 first, the rest once it serves), wait, stop them together."""
    configs = worker_configs(config, workers)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index, cfg in enumerate(configs):
            ready = ctx.Event()
            proc = ctx.Process(target=_worker, args=(cfg, host, port, index, ready),
                               name=f"hub-worker-{index}")
            proc.start()
            procs.append(proc)
            while not ready.wait(0.1):
                if not proc.is_alive() or stopping:
                    return _stop_all(procs, 1)
        print(f"{len(procs)} hub workers serve http://{host}:{port}", flush=True)
        while not stopping:
            if any(not p.is_alive() for p in procs):
                dead = [p.name for p in procs if not p.is_alive()]
                print(f"error: {', '.join(dead)} exited; stopping the other workers",
                      flush=True)
                return _stop_all(procs, 1)
            time.sleep(0.2)
        return _stop_all(procs, 0)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _stop_all(procs: list[Any], code: int) -> int:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
    return code
