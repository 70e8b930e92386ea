"""A real ``swarmhub hub`` process for tests that need one (logs, descriptor limits, load).

stdout (where the hub prints its URL and the first admin token) and stderr (the log) go
to separate files, so a test can check the log alone. ``nofile`` starts the hub with a
lower ``RLIMIT_NOFILE`` through a tiny Python wrapper that sets the limit and then
``exec``s the hub (the harness's Proc has no ``preexec_fn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from interop.harness import VENV_PYTHON, Proc, free_port, wait_listening

__all__ = ["HubProcess", "start_hub_process"]

_LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'swarmhub', *sys.argv[2:]])"
)


@dataclass
class HubProcess:
    proc: Proc
    url: str
    port: int
    token: str
    log: Path  # stderr: the hub's log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_hub_process(work: Path, *extra: str, nofile: int | None = None) -> HubProcess:
    """Start a hub on a free loopback port (no embedded seeder unless ``extra`` asks)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["hub", "--data", str(work / "data"), "--listen", f"127.0.0.1:{port}"]
    if "--peer-listen" not in extra:
        args += ["--peer-listen", "off"]
    args += list(extra)
    if nofile is None:
        argv = [str(VENV_PYTHON), "-m", "swarmhub", *args]
    else:
        argv = [str(VENV_PYTHON), "-c", _LIMITED, str(nofile), *args]
    proc = Proc(argv, name="hub", log=work / "hub.out", stderr_log=work / "hub.err")
    try:
        line = proc.wait_for_line(lambda s: "admin token:" in s, 60)
        m = re.search(r"admin token: (\S+)", line)
        assert m is not None, proc.describe()
        wait_listening(port, 30, proc)
    except BaseException:
        proc.stop()
        raise
    return HubProcess(proc, f"http://127.0.0.1:{port}", port, m.group(1), work / "hub.err")
