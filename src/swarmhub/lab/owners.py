"""What the lab (root, for network namespaces) writes into a user's tree stays theirs.

Why: the lab usually runs as root on a checkout a user owns. Files and folders root
leaves there are root's, and their owner can then neither replace nor remove them
(``git clean -fdx``, ``rm -rf`` of the checkout: "Permission denied"). Bytecode
(:mod:`swarmhub.lab.bytecode`) and the report folder (``lab run`` without ``--out``
writes ``./lab-report``) are given to the owner of the folder they were written in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

__all__ = ["give_to_owner_of", "tree"]

log = logging.getLogger(__name__)


def give_to_owner_of(folder: str | os.PathLike[str], paths: Iterable[str]) -> int:
    """Give each of ``paths`` the owner (user and group) of ``folder`` where they differ
    (symlinks themselves, not their targets); return how many were changed. A path that
    may not be changed is logged and left (the lab's work is done either way)."""
    owner = os.stat(folder)
    changed = 0
    for path in paths:
        try:
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.lchown(path, owner.st_uid, owner.st_gid)
                changed += 1
        except OSError as exc:
            log.warning("could not give %s to the owner of %s: %s", path, folder, exc)
    return changed


def tree(top: str | os.PathLike[str]) -> Iterable[str]:
    """``top`` and everything under it (not following symlinks); nothing if it is gone."""
    if not os.path.lexists(top):
        return
    yield os.fspath(top)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            yield os.path.join(folder, name)
