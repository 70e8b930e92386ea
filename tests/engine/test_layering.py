"""The engine's layering: sans-IO cores import no I/O, and the asyncio modules import in
one direction (session -> torrent -> peer -> services), with no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import swarmhub.engine as engine

ENGINE = Path(engine.__file__).parent
SANS_IO = ["swarm", "peerstate", "schedule", "integrity", "actions", "picker", "choker",
           "superseed", "selection"]
IO_MODULES = {"asyncio", "socket", "time", "logging", "threading", "selectors", "aiohttp"}


def imports(module: str) -> set[str]:
    tree = ast.parse((ENGINE / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_cores_import_no_io_and_no_clock(module: str) -> None:
    found = {name.split(".")[0] for name in imports(module)} & IO_MODULES
    assert not found, f"engine/{module}.py imports {found}"


@pytest.mark.parametrize(("module", "forbidden"), [
    ("peer", {"swarmhub.engine.torrent", "swarmhub.engine.session"}),
    ("torrent", {"swarmhub.engine.session"}),
    ("services", {"swarmhub.engine.torrent", "swarmhub.engine.session",
                  "swarmhub.engine.peer"}),
])
def test_driver_modules_import_in_one_direction(module: str, forbidden: set[str]) -> None:
    assert not imports(module) & forbidden


def test_importing_the_torrent_driver_does_not_load_the_session() -> None:
    code = ("import sys, swarmhub.engine.torrent; "
            "sys.exit('swarmhub.engine.session' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
