"""The engine's layering: sans-IO cores import no I/O, and the asyncio modules import in
one direction (session -> torrent -> its parts -> peer -> services), with no cycle; the
torrent driver stays thin (its I/O lives in one module per part)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import swarmhub.engine as engine

ENGINE = Path(engine.__file__).parent
SANS_IO = ["swarm", "peerstate", "schedule", "integrity", "actions", "picker", "choker",
           "superseed", "selection", "status"]
#: The torrent driver's parts: each sees the torrent only through a Protocol.
PARTS = ["admission", "jobs", "ondisk", "pex_driver", "pieces", "status", "tracker_driver",
         "uploads", "wanted", "webseed_driver"]
#: Lines engine/torrent.py may have: new I/O goes into a part, not into the driver.
TORRENT_BUDGET = 350
IO_MODULES = {"asyncio", "socket", "time", "logging", "threading", "selectors", "aiohttp"}


def imports(module: str) -> set[str]:
    """Every module ``engine/<module>.py`` names in an import, at any level (late imports
    and ``TYPE_CHECKING`` ones too: a cycle through those is still a cycle)."""
    tree = ast.parse((ENGINE / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
    return out


def engine_graph() -> dict[str, set[str]]:
    """Which engine modules each engine module imports."""
    names = {p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    prefix = "swarmhub.engine."
    return {n: {d.removeprefix(prefix) for d in imports(n)
                if d.startswith(prefix) and d.removeprefix(prefix) in names} - {n}
            for n in names}


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_cores_import_no_io_and_no_clock(module: str) -> None:
    found = {name.split(".")[0] for name in imports(module)} & IO_MODULES
    assert not found, f"engine/{module}.py imports {found}"


@pytest.mark.parametrize(("module", "forbidden"), [
    ("peer", {"swarmhub.engine.torrent", "swarmhub.engine.session"}),
    ("torrent", {"swarmhub.engine.session"}),
    ("services", {"swarmhub.engine.torrent", "swarmhub.engine.session",
                  "swarmhub.engine.peer"}),
    ("mse_transport", {"swarmhub.engine.torrent", "swarmhub.engine.session"}),
    *((part, {"swarmhub.engine.torrent", "swarmhub.engine.session"}) for part in PARTS),
])
def test_driver_modules_import_in_one_direction(module: str, forbidden: set[str]) -> None:
    assert not imports(module) & forbidden


def test_importing_the_torrent_driver_does_not_load_the_session() -> None:
    code = ("import sys, swarmhub.engine.torrent; "
            "sys.exit('swarmhub.engine.session' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_engine_modules_import_each_other_without_a_cycle() -> None:
    graph = engine_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_cycle_check_sees_the_import_that_would_close_a_cycle() -> None:
    graph = engine_graph()
    assert "peer" in graph["torrent"] and "services" in graph["peer"]
    assert "mse_transport" in graph["admission"], "late and TYPE_CHECKING imports count"


def test_the_torrent_driver_stays_within_its_line_budget() -> None:
    lines = len((ENGINE / "torrent.py").read_text().splitlines())
    assert lines <= TORRENT_BUDGET, (
        f"engine/torrent.py has {lines} lines (budget {TORRENT_BUDGET}): put new I/O into "
        f"one of its parts ({', '.join(PARTS)}) or a new one")
