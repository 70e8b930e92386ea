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

The lab runs as root (network namespaces), usually on a checkout a user owns: root's
``__pycache__`` folders would be root's too, and then their owner could neither replace a
stale file (an edit recompiled at every start, ``compileall`` failed) nor remove them
(``git clean -fdx``, ``rm -rf`` of the checkout: "Permission denied"). So each
``__pycache__`` folder and the files in it get the owner of the source folder holding it
(:mod:`swarmhub.lab.owners`).
"""

from __future__ import annotations

import compileall
import logging
import os
from pathlib import Path

import swarmhub
from swarmhub.lab.owners import give_to_owner_of, tree

__all__ = ["PACKAGE", "compile_package", "give_caches_to_source_owners"]

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
    if os.geteuid() == 0:
        give_caches_to_source_owners(root)
    return ok


def give_caches_to_source_owners(root: Path) -> int:
    """Give every ``__pycache__`` folder under ``root`` and its entries the owner (user and
    group) of the folder holding it, where they differ; return how many were changed. For
    root, after writing bytecode into a tree someone else owns (see the module docstring)."""
    changed = 0
    for folder, dirs, _files in os.walk(root):
        if "__pycache__" not in dirs:
            continue
        dirs.remove("__pycache__")  # nothing below it to walk
        changed += give_to_owner_of(folder, tree(os.path.join(folder, "__pycache__")))
    return changed
