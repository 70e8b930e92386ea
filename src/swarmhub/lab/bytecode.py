"""The lab's processes start from bytecode, as an installed swarmhub does.

Why: pip compiles a package's modules to ``.pyc`` files when it installs it, so a user's
``swarmhub get`` only reads them. A checkout that the lab runs (an editable install) has
none until some process writes them, and where ``PYTHONDONTWRITEBYTECODE`` is set (as in
this project's shells and CI) none ever does: then each of a run's 16-32 clients compiled
every swarmhub module it imported, ~0.07 CPU-s of its start-up (a get's imports: 0.26 ->
0.19 CPU-s) and, for what it imports after the start gate, inside the timed run. The lab
compiles the package once before it starts its processes; ``compileall`` writes the files
whatever ``sys.dont_write_bytecode`` says, and the interpreter reads them either way (it
checks each against its source's size and modification time, so an edit recompiles).
"""

from __future__ import annotations

import compileall
import logging
from pathlib import Path

import swarmhub

__all__ = ["PACKAGE", "compile_package"]

log = logging.getLogger(__name__)

#: The swarmhub package this process runs (the lab's processes run the same one).
PACKAGE = Path(swarmhub.__file__).parent


def compile_package(root: Path | None = None) -> bool:
    """Write the missing or stale ``.pyc`` files of the package under ``root`` (default:
    :data:`PACKAGE`). False when some could not be written (a read-only install: the lab
    still runs, its processes compile as before)."""
    root = root or PACKAGE
    ok = bool(compileall.compile_dir(root, quiet=2))
    if not ok:
        log.warning("could not write the bytecode of %s: the lab's processes compile "
                    "their modules at each start", root)
    return ok
