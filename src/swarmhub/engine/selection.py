"""Choosing files: ``--files`` specs -> file priorities -> piece priorities (pure).

Files are named the way ``swarmhub info`` lists them: by index into
:attr:`Metainfo.data_files` (pads excluded) or by a glob on the path inside the torrent
(``docs/*``; as in :func:`fnmatch.fnmatchcase`, ``*`` also crosses ``/``, and a pattern
naming a folder selects everything below it).

A piece's priority is the highest priority of the files it overlaps, so a piece shared
by a chosen and an unchosen file (an *edge piece*) is downloaded and verified whole; the
storage keeps the unchosen file's bytes of it out of sight (see
:mod:`swarmhub.storage.parts`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from swarmhub.engine.picker import MAX_PRIORITY
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo

__all__ = ["SelectionError", "file_priorities", "piece_priorities", "wanted_files"]


class SelectionError(SwarmhubError):
    """A ``--files`` spec that names no file, or an index out of range."""


def _matches(pattern: str, path: str) -> bool:
    if fnmatch.fnmatchcase(path, pattern):
        return True
    parts = path.split("/")  # a folder name selects what is below it
    return any(fnmatch.fnmatchcase("/".join(parts[:k]), pattern.rstrip("/"))
               for k in range(1, len(parts)))


def wanted_files(meta: Metainfo, specs: Iterable[str]) -> set[int]:
    """Indices (into ``meta.data_files``) named by ``specs``: each an index or a glob.

    Raises :class:`SelectionError` for a spec that selects nothing, so a typo is not a
    silent empty download.
    """
    files = meta.data_files
    paths = ["/".join(f.path) for f in files]
    chosen: set[int] = set()
    for spec in specs:
        text = spec.strip()
        if text.isdigit():
            index = int(text)
            if index >= len(files):
                raise SelectionError(
                    f"--files {text}: the torrent has files 0..{len(files) - 1} "
                    "(see swarmhub info)")
            chosen.add(index)
            continue
        hits = {i for i, p in enumerate(paths) if _matches(text, p)}
        if not hits:
            raise SelectionError(
                f"--files {text!r} matches no file in the torrent (swarmhub info lists them)")
        chosen |= hits
    return chosen


def file_priorities(meta: Metainfo, specs: Sequence[str]) -> list[int]:
    """One priority per data file: 1 for the chosen ones, 0 for the rest (all 1 when
    ``specs`` is empty: no selection means everything)."""
    n = len(meta.data_files)
    if not specs:
        return [1] * n
    chosen = wanted_files(meta, specs)
    return [1 if i in chosen else 0 for i in range(n)]


def piece_priorities(meta: Metainfo, file_prios: Sequence[int]) -> list[int]:
    """Each piece's priority: the highest of the data files it overlaps (pads count for
    nothing; a piece made only of pads and skipped files gets 0)."""
    files = meta.data_files
    if len(file_prios) != len(files):
        raise SelectionError(f"{len(file_prios)} file priorities for {len(files)} files")
    out = [0] * meta.num_pieces
    pl = meta.piece_length
    for f, prio in zip(files, file_prios, strict=True):
        if not 0 <= prio <= MAX_PRIORITY:
            raise SelectionError(f"file priority {prio} is not in 0..{MAX_PRIORITY}")
        if not f.length or not prio:
            continue
        for i in range(f.offset // pl, (f.end - 1) // pl + 1):
            if out[i] < prio:
                out[i] = prio
    return out
