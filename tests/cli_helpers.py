"""Helpers for tests that run the ``swarmhub`` command against a real hub."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from hub.hubproc import HubProc, cli, start_hub
from interop.harness import make_test_data


@contextlib.contextmanager
def published_file(work: Path, size: int, *, seed: int = 44,
                   name: str = "file.bin") -> Iterator[tuple[HubProc, str]]:
    """A hub process with one published file of ``size`` bytes: (hub, its /f/ URL)."""
    work.mkdir(parents=True, exist_ok=True)
    hub = start_hub(work / "data", work, "hub")
    try:
        data = make_test_data(work / "src", [size], seed=seed, name=name)
        assert hub.token is not None
        pub = cli(work, "publish", "publish", str(data), "--hub", hub.url, "--token", hub.token)
        assert pub.returncode == 0, pub.describe()
        m = re.search(r"http:\s+(\S+)", pub.output())
        assert m is not None, pub.output()
        yield hub, m.group(1)
    finally:
        hub.proc.stop()
