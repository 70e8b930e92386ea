"""Whether a process is still running, for the owners recorded in names and state files
(the lab's namespaces, the DHT node's state, the test servers' folders)."""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: object) -> bool:
    """True while process ``pid`` exists (another user's counts); False for anything that
    is not a positive int, as read from a file that may be stale or hand-edited."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
