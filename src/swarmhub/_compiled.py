"""Use the mypyc-compiled hot modules when ``make setup`` built them and they still match.

``scripts/build-compiled.py`` compiles the swarm core and the simulator
(:data:`MODULES`) with mypyc into ``swarmhub/_mypyc/`` (next to this file, not next to
the sources: an extension module beside its ``.py`` would shadow every later edit of
it). It records a hash of each compiled source and of every swarmhub module they import
(mypyc bakes in tuple layouts and constants of those), and :class:`_Finder` loads the
extensions only while every hash still matches, all or none: the compiled modules live
in one shared library and call each other natively, so one pure module among compiled
ones would not fit. The ``.py`` files stay the single source of truth; ``SWARMHUB_PURE=1``
forces them (the equivalence test compares both).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

# pathlib, hashlib, json and importlib.util are imported only when a build exists:
# `import swarmhub` stays cheap for the CLI

__all__ = ["MODULES", "PURE_ENV", "install", "status", "uses_compiled"]

#: the modules worth compiling (profiled hot in `lab simulate` N=1,000: the core's
#: per-block path, the picker, rate meters, the network model and the event loop), and
#: PEX's books with the simulator's PEX tick (simspeed-29b: interpreted, ~5 % of a run).
#: Not wire/connection.py: mypyc builds it, but its batch paths gained little (peercpu-23,
#: us per call pure -> compiled, load 25: pieces_at 32 blocks 11.3-12.2 -> 11.7-13.8,
#: send_all 32 Requests 7.4-8.1 -> 4.4-4.6, haves_at 64 6.1-7.7 -> 5.5-5.7, requests_at
#: 64 33-35 -> 34-47: struct calls and message objects dominate), i.e. < 10 ms per GiB.
#: wire/messages.py is (sim10k-32): its classes become native, so the core and the
#: simulator read a Request's or a Have's fields natively (by name they were ~5 % of a
#: run at N=64); a compiled message checks its fields' types when it is made.
#: engine/superseed.py is (seedcpu-40): the source's offer pass calls it per peer, and
#: the core called it as an interpreted module (a Python-level call per Have too).
#: engine/schedule.py is (stop 49): the dialer takes every address of every tracker answer
#: and PEX message (``Dialer.add`` interpreted: 6 % of N=3,000 to 4 s, 10 % at N=10,000).
MODULES = (
    "swarmhub.engine.actions",
    "swarmhub.engine.choker",
    "swarmhub.engine.peerstate",
    "swarmhub.engine.pex",
    "swarmhub.engine.picker",
    "swarmhub.engine.schedule",
    "swarmhub.engine.superseed",
    "swarmhub.engine.swarm",
    "swarmhub.lab.netmodel",
    "swarmhub.lab.simservices",
    "swarmhub.lab.simulate",
    "swarmhub.wire.messages",
)
PURE_ENV = "SWARMHUB_PURE"
#: the build: extensions and manifest.json (paths as str: see the imports)
DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mypyc")
MANIFEST = os.path.join(DIR, "manifest.json")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds swarmhub/


def source_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale(sources: Mapping[str, str], root: Path) -> str | None:
    """The first recorded source (relative to ``root``) whose hash changed, or None."""
    for rel, digest in sources.items():
        path = root / rel
        if not path.is_file() or source_hash(path) != digest:
            return rel
    return None


class _Finder:
    """Finds the compiled modules of one manifest; decides fresh-or-not once."""

    def __init__(self, manifest: Mapping[str, Any], directory: Path, root: Path) -> None:
        self._files: dict[str, Path] = {
            name: directory / rel for name, rel in manifest["extensions"].items()
        }
        self._sources: dict[str, str] = dict(manifest["sources"])
        self._root = root
        self._fresh: bool | None = None
        self.reason = ""

    def fresh(self) -> bool:
        if self._fresh is None:
            changed = stale(self._sources, self._root)
            missing = [str(p) for p in self._files.values() if not p.is_file()]
            if changed is not None:
                self.reason = f"{changed} changed since the build; `make setup` rebuilds it"
            elif missing:
                self.reason = f"{missing[0]} is missing"
            self._fresh = changed is None and not missing
        return self._fresh

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        so = self._files.get(fullname)
        if so is None or not self.fresh():
            return None
        import importlib.util

        loader = importlib.machinery.ExtensionFileLoader(fullname, str(so))
        return importlib.util.spec_from_file_location(fullname, so, loader=loader)


_finder: _Finder | None = None
_why_not = "not built (`make setup` builds it)"


def install() -> None:
    """Put the finder first on ``sys.meta_path`` if a build for this Python exists."""
    global _finder, _why_not
    if _finder is not None or not os.path.isfile(MANIFEST):
        return
    if os.environ.get(PURE_ENV):
        _why_not = f"{PURE_ENV} is set"
        return
    import json
    from pathlib import Path

    try:
        manifest = json.loads(Path(MANIFEST).read_text())
    except (OSError, ValueError):
        _why_not = f"{MANIFEST} is unreadable"
        return
    if manifest.get("ext_suffix") != importlib.machinery.EXTENSION_SUFFIXES[0]:
        _why_not = f"built for another Python ({manifest.get('ext_suffix')})"
        return
    _finder = _Finder(manifest, Path(DIR), Path(PACKAGE_ROOT))
    sys.meta_path.insert(0, _finder)


def uses_compiled() -> bool:
    """Whether the compiled modules are (or will be, on first import) the ones loaded."""
    return _finder is not None and _finder.fresh()


def status() -> str:
    """One line saying which core runs, and why not the compiled one."""
    if uses_compiled():
        return "compiled (mypyc) core"
    reason = _finder.reason if _finder is not None else _why_not
    return f"pure-Python core (the compiled one: {reason})"
