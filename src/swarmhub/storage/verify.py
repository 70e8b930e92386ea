"""Piece verification: v1 SHA-1, v2 merkle (BEP 52), hybrid by v2 (SHA-1 sampled); and
a full recheck.

A v1 piece hash covers the whole piece of the piece space, pads included as zeros. A v2
piece lies inside one file (BEP 52 aligns every file to a piece boundary) followed by pad;
it is checked against that file's piece layer, or against the file's ``pieces root`` when
the file is no larger than one piece. A hybrid torrent's piece must pass its v2 hash, so a
peer cannot feed data that only satisfies the weaker SHA-1; see :class:`PieceVerifier` for
when its SHA-1 is checked too.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from swarmhub.errors import InconsistentHashesError, StorageError
from swarmhub.metainfo import merkle
from swarmhub.metainfo.model import FileEntry, Metainfo
from swarmhub.storage.files import TorrentStorage

__all__ = ["V1_STRIDE", "PieceVerifier", "derive_piece_layer", "recheck"]


_ZEROS = bytes(1 << 20)


def _is_zero(view: memoryview) -> bool:
    """All bytes zero? (compared in C, one megabyte at a time)."""
    step = len(_ZEROS)
    return all(
        view[pos : pos + step] == _ZEROS[: min(step, len(view) - pos)]
        for pos in range(0, len(view), step)
    )


#: A hybrid torrent's pieces are also checked against their SHA-1 when their index is a
#: multiple of this (and the last piece): see :class:`PieceVerifier`.
V1_STRIDE = 16


class PieceVerifier:
    """Checks a piece's bytes against the torrent's hashes (pure; thread-safe).

    A hybrid (v1 + v2) torrent's piece is decided by its v2 hash alone (the SHA-256 tree
    over 16 KiB blocks: the stronger hash): hashing SHA-1 too doubled the hashing CPU of a
    download, which on two cores set its pace. Its SHA-1 is checked
    as well on a bounded sample (pieces ``0, k, 2k, ...`` for ``k = v1_stride``, and the
    last one: a wrong layout or a torrent made from other data shows there), and for every
    piece that fails its v2 hash. Hashes that disagree (one passes, the other fails: the
    torrent describes two contents, libtorrent's "torrent_inconsistent_hashes") raise
    :class:`~swarmhub.errors.InconsistentHashesError`: the torrent is stopped with that
    error rather than serving v1 peers data their SHA-1 rejects. ``v1_stride=1`` checks
    every piece both ways (a recheck of data on disk: it is what a seeder serves).
    """

    def __init__(self, meta: Metainfo, v1_stride: int = V1_STRIDE) -> None:
        self.meta = meta
        self._v1 = meta.pieces_v1
        self._v2 = meta.info_hash_v2 is not None
        self.v1_stride = max(1, v1_stride)
        files = sorted(
            (f for f in meta.files if not f.pad and f.length > 0), key=lambda f: f.offset
        )
        self._files = files
        self._starts = [f.offset for f in files]

    def v1_due(self, index: int) -> bool:
        """Is piece ``index`` of a hybrid torrent in the SHA-1 sample?"""
        return index % self.v1_stride == 0 or index == self.meta.num_pieces - 1

    def v1_sample(self) -> bytearray:
        """One byte per piece, 1 where :meth:`v1_due`: built by slices, not a call per
        piece (every hybrid torrent's start made one per piece)."""
        n = self.meta.num_pieces
        flags = bytearray(n)
        flags[::self.v1_stride] = b"\x01" * len(range(0, n, self.v1_stride))
        if n:
            flags[-1] = 1
        return flags

    def check(self, index: int, data: bytes | bytearray | memoryview,
              v1: bool = False) -> bool:
        """True when ``data`` is exactly piece ``index`` (False for a bad index or size);
        ``v1``: check a hybrid piece's SHA-1 too, in the sample or not (one we will upload
        to a peer that checks SHA-1).

        For a hybrid torrent whose piece layers are not known yet (a magnet still fetching
        them), the v1 hash alone decides; a v2-only torrent without them cannot verify.
        Raises :class:`~swarmhub.errors.InconsistentHashesError` when a hybrid torrent's
        two hashes of the piece disagree (see the class).
        """
        meta = self.meta
        if not 0 <= index < meta.num_pieces:
            return False
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view) != meta.piece_size(index):
            return False
        if not self._v2:
            return self._v1 is not None and _sha1_ok(self._v1, index, view)
        # A piece whose SHA-1 is due gets it in the same pass as its SHA-256 leaves.
        sha1 = hashlib.sha1() if self._v1 is not None and (v1 or self.v1_due(index)) \
            else None
        v2, fed = self._check_v2(index, view, sha1)
        if self._v1 is None:
            return bool(v2)
        if v2 is True and not v1 and not self.v1_due(index):
            return True  # the stronger hash decides; SHA-1 only on the sample
        v1 = _sha1_ok(self._v1, index, view, sha1 if fed else None)
        if v2 is not None and v1 != v2:
            raise _inconsistent(index, v2)
        return v1

    def check_v1(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Check the SHA-1 of a hybrid torrent's piece we hold (it passed its v2 hash, or
        was seeded as is) before a peer that checks SHA-1 gets it: outside the sample, a
        torrent whose hashes disagree would otherwise reach v1 peers that reject it.
        Raises :class:`~swarmhub.errors.InconsistentHashesError` when it fails."""
        if self._v1 is not None and self._v2 and not _sha1_ok(self._v1, index, data):
            raise _inconsistent(index, True)

    def _check_v2(self, index: int, view: memoryview, sha1: Any = None
                  ) -> tuple[bool | None, bool]:
        """The v2 verdict (None when the file's piece layer is not known yet), and whether
        ``sha1`` (a hashlib SHA-1 object, or None) was fed all of ``view`` on the way."""
        pl = self.meta.piece_length
        start = index * pl
        k = bisect.bisect_right(self._starts, start) - 1
        if k < 0 or self._files[k].end <= start:
            return _is_zero(view), False  # a piece made only of padding
        entry = self._files[k]
        if entry.offset % pl or entry.pieces_root is None:
            return False, False  # not a v2 layout: files must start on a piece boundary
        n = min(len(view), entry.end - start)
        part = view[:n]
        if entry.length > pl:
            layer = self.meta.piece_layers.get(entry.pieces_root)
            if layer is None:
                return None, False
            j = (start - entry.offset) // pl
            expected = layer[j * 32 : j * 32 + 32]
            if len(expected) != 32:
                return False, False
            ok = merkle.piece_root(part, pl, sha1) == expected
        else:
            ok = merkle.file_root(part, sha1) == entry.pieces_root
        if sha1 is not None and n < len(view):
            sha1.update(view[n:])  # the pad after the file (zeros, checked below)
        return ok and (n == len(view) or _is_zero(view[n:])), sha1 is not None


def _sha1_ok(pieces_v1: bytes, index: int, data: bytes | bytearray | memoryview,
             fed: Any = None) -> bool:
    """Is ``data`` piece ``index`` by its SHA-1? ``fed``: a SHA-1 already fed ``data``."""
    digest = (fed if fed is not None else hashlib.sha1(data)).digest()
    return bool(digest == pieces_v1[index * 20 : index * 20 + 20])


def _inconsistent(index: int, v2: bool) -> InconsistentHashesError:
    """The error of a hybrid piece whose v2 verdict (``v2``) and SHA-1 verdict differ."""
    return InconsistentHashesError(
        f"inconsistent torrent: piece {index} {'matches' if v2 else 'fails'} its v2 "
        f"(SHA-256) hash but {'fails' if v2 else 'matches'} its v1 (SHA-1) hash: "
        "the torrent describes two different contents")


def _unreadable(meta: Metainfo, storage: TorrentStorage) -> bytearray:
    """1 for each piece touching bytes that a missing or truncated file lacks."""
    bad = bytearray(meta.num_pieces)
    pl = meta.piece_length
    for index, (entry, size) in enumerate(zip(storage.data_files, storage.sizes(), strict=True)):
        if entry.length and size < entry.length and not storage.is_parked(index):
            first, last = (entry.offset + max(size, 0)) // pl, (entry.end - 1) // pl
            bad[first : last + 1] = b"\1" * (last + 1 - first)
    return bad


def derive_piece_layer(meta: Metainfo, storage: TorrentStorage, entry: FileEntry) -> bytes | None:
    """The v2 piece layer of ``entry`` (a file larger than one piece) hashed from its data
    on disk, or None when that does not hash to the file's ``pieces root`` (the data is
    not that file's, or the torrent's v1 and v2 hashes describe two contents).

    For a hybrid torrent taken without its piece layers (the hub's short form, whose
    pieces were checked by SHA-1): a seeder derives a layer once it holds the file, to
    answer BEP 52 hash requests. Blocking (reads and hashes the whole file): run it on a
    worker thread; raises :class:`~swarmhub.errors.StorageError` when a read fails."""
    pl = meta.piece_length
    if entry.pieces_root is None or entry.length <= pl:
        return None
    step = max(pl, (1 << 20) // pl * pl)  # read a megabyte (whole pieces) at a time
    hashes: list[bytes] = []
    for start in range(entry.offset, entry.end, step):
        data = memoryview(storage.read(start, min(step, entry.end - start)))
        hashes += (merkle.piece_root(data[k:k + pl], pl) for k in range(0, len(data), pl))
    if merkle.root_from_layer(hashes, pl, entry.length) != entry.pieces_root:
        return None
    return b"".join(hashes)


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
    verifier = PieceVerifier(meta, v1_stride=1)  # what we will seed: both hashes
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
