"""Piece verification: v1 SHA-1, v2 merkle (BEP 52), hybrid both; and a full recheck.

A v1 piece hash covers the whole piece of the piece space, pads included as zeros. A v2
piece lies inside one file (BEP 52 aligns every file to a piece boundary) followed by pad;
it is checked against that file's piece layer, or against the file's ``pieces root`` when
the file is no larger than one piece. A hybrid torrent must pass both, so a peer cannot
feed data that only satisfies the weaker SHA-1.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from swarmhub.errors import StorageError
from swarmhub.metainfo import merkle
from swarmhub.metainfo.model import Metainfo
from swarmhub.storage.files import TorrentStorage

__all__ = ["PieceVerifier", "recheck"]


_ZEROS = bytes(1 << 20)


def _is_zero(view: memoryview) -> bool:
    """All bytes zero? (compared in C, one megabyte at a time)."""
    step = len(_ZEROS)
    return all(
        view[pos : pos + step] == _ZEROS[: min(step, len(view) - pos)]
        for pos in range(0, len(view), step)
    )


class PieceVerifier:
    """Checks a piece's bytes against the torrent's hashes (pure; thread-safe)."""

    def __init__(self, meta: Metainfo) -> None:
        self.meta = meta
        self._v1 = meta.pieces_v1
        self._v2 = meta.info_hash_v2 is not None
        files = sorted(
            (f for f in meta.files if not f.pad and f.length > 0), key=lambda f: f.offset
        )
        self._files = files
        self._starts = [f.offset for f in files]

    @property
    def hybrid(self) -> bool:
        """Both hash kinds to check (:meth:`check` can run them apart, ``only=``)."""
        return self._v1 is not None and self._v2

    def check(self, index: int, data: bytes | bytearray | memoryview,
              only: str | None = None) -> bool:
        """True when ``data`` is exactly piece ``index`` (False for a bad index or size).

        For a hybrid torrent whose piece layers are not known yet (a magnet still fetching
        them), the v1 hash alone decides; a v2-only torrent without them cannot verify.
        ``only="v1"`` or ``"v2"`` checks one kind of a hybrid's hashes (two threads may
        then hash one piece); a piece is good when both pass.
        """
        meta = self.meta
        if not 0 <= index < meta.num_pieces:
            return False
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view) != meta.piece_size(index):
            return False
        if self._v1 is None and not self._v2:
            return False
        if not self.hybrid:
            only = None  # one kind of hash: it always decides
        if self._v1 is not None and only != "v2":
            expected = self._v1[index * 20 : index * 20 + 20]
            if hashlib.sha1(view).digest() != expected:
                return False
        return self._check_v2(index, view) if self._v2 and only != "v1" else True

    def _check_v2(self, index: int, view: memoryview) -> bool:
        pl = self.meta.piece_length
        start = index * pl
        k = bisect.bisect_right(self._starts, start) - 1
        if k < 0 or self._files[k].end <= start:
            return _is_zero(view)  # a piece made only of padding
        entry = self._files[k]
        if entry.offset % pl or entry.pieces_root is None:
            return False  # not a v2 layout: files must start on a piece boundary
        n = min(len(view), entry.end - start)
        part = view[:n]
        if entry.length > pl:
            layer = self.meta.piece_layers.get(entry.pieces_root)
            if layer is None:
                return self._v1 is not None
            j = (start - entry.offset) // pl
            expected = layer[j * 32 : j * 32 + 32]
            if len(expected) != 32 or merkle.piece_root(part, pl) != expected:
                return False
        elif merkle.file_root(part) != entry.pieces_root:
            return False
        return n == len(view) or _is_zero(view[n:])


def _unreadable(meta: Metainfo, storage: TorrentStorage) -> bytearray:
    """1 for each piece touching bytes that a missing or truncated file lacks."""
    bad = bytearray(meta.num_pieces)
    pl = meta.piece_length
    for index, (entry, size) in enumerate(zip(storage.data_files, storage.sizes(), strict=True)):
        if entry.length and size < entry.length and not storage.is_parked(index):
            first, last = (entry.offset + max(size, 0)) // pl, (entry.end - 1) // pl
            bad[first : last + 1] = b"\1" * (last + 1 - first)
    return bad


def recheck(
    meta: Metainfo,
    storage: TorrentStorage,
    *,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    only: Iterable[int] | None = None,
) -> bytearray:
    """Verify the data on disk; 1 per piece that verifies, 0 otherwise (and for pieces
    outside ``only``).

    Missing or short files make their pieces 0 without reading them; no exception is
    raised for them. Hashing runs on ``threads`` workers (default: all cores); each worker
    reuses one piece buffer and at most two pieces per worker are queued, so memory stays
    near ``threads * piece_length``. ``progress`` is called in the calling thread with the
    number of pieces handled so far.
    """
    n = meta.num_pieces
    result = bytearray(n)
    wanted: Sequence[int] = range(n) if only is None else sorted({i for i in only if 0 <= i < n})
    bad = _unreadable(meta, storage)
    todo = [i for i in wanted if not bad[i]]
    done = len(wanted) - len(todo)
    if progress is not None and done:
        progress(done)
    if not todo:
        return result
    verifier = PieceVerifier(meta)
    workers = max(1, threads or os.cpu_count() or 1)
    local = threading.local()
    pl = meta.piece_length

    def work(index: int) -> tuple[int, bool]:
        buf: bytearray | None = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(pl)
        view = memoryview(buf)[: meta.piece_size(index)]
        try:
            storage.read_into(index * pl, view)
        except StorageError:
            return index, False
        return index, verifier.check(index, view)

    with ThreadPoolExecutor(workers, thread_name_prefix="swarmhub-recheck") as pool:
        pending: set[Future[tuple[int, bool]]] = set()
        queue = iter(todo)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < 2 * workers:
                index = next(queue, None)
                if index is None:
                    exhausted = True
                else:
                    pending.add(pool.submit(work, index))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                index, ok = fut.result()
                result[index] = ok
            done += len(finished)
            if progress is not None:
                progress(done)
    return result
