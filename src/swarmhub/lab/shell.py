"""The lab's one way to run a short system command (ip, tc, iptables, gcc), and its error.

Why a module of its own: the topology and the latency code both shell out, and each must
be bounded in time and fail with a message that names the command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from swarmhub.errors import SwarmhubError

__all__ = ["CMD_TIMEOUT", "LabError", "run_cmd"]

#: Every ip/tc/iptables call is bounded by this many seconds.
CMD_TIMEOUT = 10.0


class LabError(SwarmhubError):
    """The lab could not build, use or tear down its emulated network."""


def run_cmd(args: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
    """Run one short command, bounded in time; return stdout (LabError if it fails)."""
    try:
        res = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(args)}` did not finish within {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"`{args[0]}` is not installed (`make setup` installs it)") from exc
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(args)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout
