"""The watch folder: a ``.torrent`` written there is added to the daemon, then renamed.

Polling (once a second) rather than inotify: it works on every file system, network
mounts included, and one scan of a folder is cheap. A file is taken once its size held
still between two scans, so a torrent still being written is not read half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from swarmhub.errors import SwarmhubError

if TYPE_CHECKING:
    from swarmhub.daemon.manager import Manager

__all__ = ["watch_folder"]

log = logging.getLogger(__name__)


async def watch_folder(manager: Manager, folder: Path, interval: float = 1.0) -> None:
    """Add each new ``*.torrent`` in ``folder``, then rename it ``*.torrent.added`` (or
    ``*.torrent.invalid`` when it cannot be added); runs until cancelled."""
    sizes: dict[Path, int] = {}
    while True:
        seen: dict[Path, int] = {}
        for path in sorted(folder.glob("*.torrent")):
            with contextlib.suppress(OSError):
                seen[path] = path.stat().st_size
        for path, size in seen.items():
            if sizes.get(path) != size:
                continue
            try:
                await _add(manager, path)
            except Exception:  # one odd file must not stop the watch
                log.exception("watch folder: %s", path.name)
        sizes = {p: s for p, s in seen.items() if p.exists()}
        await asyncio.sleep(interval)


async def _add(manager: Manager, path: Path) -> None:
    from swarmhub.daemon.manager import Conflict

    try:
        await manager.add(torrent=path.read_bytes(), filename=path.name)
        suffix = ".added"
    except Conflict:
        suffix = ".added"  # already in the daemon: done all the same
    except (SwarmhubError, OSError) as exc:
        log.error("watch folder: %s: %s", path.name, exc)
        suffix = ".invalid"
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(path.name + suffix))
