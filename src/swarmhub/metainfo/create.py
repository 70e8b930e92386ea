"""Making .torrent files (v1, v2, hybrid) from a file or a folder, hashing on every core.

The data is read once with ``os.preadv`` into a small pool of reusable piece buffers and
hashed in a thread pool (hashlib releases the GIL on buffers over 2 KiB), so memory stays
bounded at a few pieces per thread whatever the size of the data. A hybrid torrent takes
its SHA-1 piece hashes and its SHA-256 16 KiB merkle leaves from the same read.

Layouts follow libtorrent 2.1 so that both produce the same info hash for the same files
and piece length: files sorted by path bytes; in hybrid torrents (and in the implied
layout of v2 ones) a BEP 47 pad file follows every non-empty file that does not end on a
piece boundary, the last one included, unless the torrent has a single file. v1 torrents
have no pad files at all (aria2 and transmission would write them to disk).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from swarmhub.bencode import bencode
from swarmhub.errors import MetainfoError, StorageError
from swarmhub.metainfo.merkle import block_hashes, next_pow2, reduce_layer, root_from_layer
from swarmhub.metainfo.model import BLOCK_SIZE, Metainfo, TorrentVersion
from swarmhub.metainfo.parse import load_torrent
from swarmhub.metainfo.paths import safe_components

__all__ = ["MAX_AUTO_PIECE_LENGTH", "auto_piece_length", "create_torrent"]

log = logging.getLogger(__name__)

MAX_AUTO_PIECE_LENGTH = 16 * 1024 * 1024
#: Piece buffers in flight never exceed this many bytes (unless threads + 1 pieces do).
_MAX_BUFFERED = 256 * 1024 * 1024
_TARGET_PIECES = 2000


@dataclass(frozen=True, slots=True)
class _Source:
    path: tuple[str, ...]
    disk: str
    length: int
    executable: bool


@dataclass(frozen=True, slots=True)
class _Slot:
    """A file or a pad placed in the piece space (index into the sources, or -1 for a pad)."""

    source: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    size: int
    #: (fd or -1, file offset, offset in the piece buffer, length, disk path) per data run.
    reads: tuple[tuple[int, int, int, int, str], ...]
    #: Source index of the file this piece belongs to in v2 (aligned layouts), else -1.
    v2_file: int
    v2_len: int
    #: True when that file fits in one piece: the worker returns its pieces root.
    v2_small: bool
    data_bytes: int


def auto_piece_length(total: int) -> int:
    """Power of two from 16 KiB to 16 MiB giving at most ~2000 pieces (1000-2000 typically)."""
    piece_length = BLOCK_SIZE
    while piece_length < MAX_AUTO_PIECE_LENGTH and total > _TARGET_PIECES * piece_length:
        piece_length *= 2
    return piece_length


def _scan(folder: str, prefix: tuple[str, ...], out: list[_Source]) -> None:
    with os.scandir(folder) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_symlink():
            log.info("skipping symlink %s", entry.path)
        elif entry.is_dir(follow_symlinks=False):
            _scan(entry.path, (*prefix, entry.name), out)
        elif entry.is_file(follow_symlinks=False):
            path = safe_components((*prefix, entry.name), what=f"file {entry.path!r}")
            st = entry.stat(follow_symlinks=False)
            out.append(_Source(path, entry.path, st.st_size, bool(st.st_mode & stat.S_IXUSR)))
        else:
            log.info("skipping %s: not a regular file", entry.path)


def _collect(path: str) -> tuple[str, list[_Source], bool]:
    """Torrent name, the files sorted by path bytes, and whether it is a single file."""
    full = os.path.abspath(path)
    name = safe_components([os.path.basename(full)], what="name")[0]
    try:
        st = os.stat(full)
        if stat.S_ISREG(st.st_mode):
            return name, [_Source((name,), full, st.st_size, bool(st.st_mode & stat.S_IXUSR))], True
        if not stat.S_ISDIR(st.st_mode):
            raise MetainfoError(f"{full!r} is neither a regular file nor a folder")
        sources: list[_Source] = []
        _scan(full, (), sources)
    except OSError as exc:
        raise StorageError(f"cannot read {exc.filename or full!r}: {exc.strerror}") from None
    if not sources:
        raise MetainfoError(f"folder {full!r} has no regular files to share")
    sources.sort(key=lambda s: [c.encode() for c in s.path])
    return name, sources, False


def _layout(sources: list[_Source], piece_length: int, aligned: bool) -> list[_Slot]:
    slots: list[_Slot] = []
    offset = 0
    for index, src in enumerate(sources):
        slots.append(_Slot(index, offset, src.length))
        offset += src.length
        gap = -offset % piece_length
        if aligned and gap and len(sources) > 1:
            slots.append(_Slot(-1, offset, gap))
            offset += gap
    return slots


def _jobs(
    slots: list[_Slot],
    sources: list[_Source],
    fds: dict[int, int],
    piece_length: int,
    total: int,
    v2: bool,
    last_piece: dict[int, int],
) -> Iterator[_Job]:
    """One job per piece; opens each file on its first piece (closed by the caller)."""
    first = 0
    for index in range(-(-total // piece_length)):
        start = index * piece_length
        end = min(start + piece_length, total)
        while slots[first].offset + slots[first].length <= start:
            first += 1
        reads = []
        v2_file, v2_len = -1, 0
        i = first
        while i < len(slots) and slots[i].offset < end:
            slot = slots[i]
            lo, hi = max(start, slot.offset), min(end, slot.offset + slot.length)
            if slot.source >= 0 and hi > lo:
                src = sources[slot.source]
                fd = -1  # small files: the worker opens them (a piece may hold thousands)
                if src.length >= piece_length:
                    if slot.source not in fds:
                        fds[slot.source] = _open(src.disk)
                    fd = fds[slot.source]
                    last_piece[slot.source] = index
                reads.append((fd, lo - slot.offset, lo - start, hi - lo, src.disk))
                if v2 and v2_file < 0:
                    v2_file, v2_len = slot.source, hi - lo
            i += 1
        small = v2_file >= 0 and sources[v2_file].length <= piece_length
        yield _Job(
            index, end - start, tuple(reads), v2_file, v2_len, small, sum(r[3] for r in reads)
        )


def _open(disk: str) -> int:
    try:
        return os.open(disk, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise StorageError(f"cannot open {disk!r}: {exc.strerror}") from None


def _read_into(view: memoryview, fd: int, offset: int) -> int:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _hash_piece(
    job: _Job, buf: bytearray, v1: bool, piece_length: int
) -> tuple[bytes | None, bytes | None]:
    """SHA-1 of the piece (v1) and its v2 piece-layer hash or file root; runs in a worker."""
    view = memoryview(buf)[: job.size]
    covered = 0
    for fd, file_off, buf_off, length, disk in job.reads:
        if buf_off > covered:
            view[covered:buf_off] = bytes(buf_off - covered)
        own = fd < 0
        if own:
            fd = _open(disk)
        try:
            got = _read_into(view[buf_off : buf_off + length], fd, file_off)
        except OSError as exc:
            raise StorageError(f"cannot read {disk!r}: {exc.strerror}") from None
        finally:
            if own:
                os.close(fd)
        if got != length:
            raise StorageError(f"{disk!r} shrank while it was being hashed; try again")
        covered = buf_off + length
    if v1 and covered < job.size:
        view[covered:] = bytes(job.size - covered)  # pad files are zeros
    if job.v2_file < 0:
        return (hashlib.sha1(view).digest() if v1 else None), None
    # A hybrid piece: its SHA-1 is fed block by block with the SHA-256 leaves (one pass
    # over the bytes: see merkle.block_hashes).
    h = hashlib.sha1() if v1 else None
    leaves = block_hashes(view[: job.v2_len], h)
    width = next_pow2(len(leaves)) if job.v2_small else piece_length // BLOCK_SIZE
    if h is not None:
        h.update(view[job.v2_len:])
    return (h.digest() if h is not None else None), reduce_layer(leaves, width)


def _tree(sources: list[_Source], roots: list[bytes | None]) -> dict[bytes, Any]:
    tree: dict[bytes, Any] = {}
    for src, root in zip(sources, roots, strict=True):
        node = tree
        for part in src.path[:-1]:
            node = node.setdefault(part.encode(), {})
        leaf: dict[bytes, Any] = {b"length": src.length}
        if root is not None:
            leaf[b"pieces root"] = root
        if src.executable:
            leaf[b"attr"] = b"x"
        node[src.path[-1].encode()] = {b"": leaf}
    return tree


def create_torrent(
    path: str | os.PathLike[str],
    *,
    version: TorrentVersion = TorrentVersion.HYBRID,
    piece_length: int | None = None,
    trackers: Sequence[Sequence[str]] = (),
    url_list: Sequence[str] = (),
    private: bool = False,
    comment: str = "",
    created_by: str = "swarmhub/0.1",
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Metainfo:
    """Hash a file (single-file torrent) or a folder (multi-file torrent) into a torrent.

    Folders contribute their regular files only (symlinks and special files are skipped
    and logged). ``progress(n)`` is called from this thread with the bytes of file data
    just hashed. Disk errors raise :class:`StorageError`, unusable input
    :class:`MetainfoError`.
    """
    name, sources, single = _collect(os.fspath(path))
    data_total = sum(s.length for s in sources)
    if data_total == 0:
        raise MetainfoError(f"{os.fspath(path)!r} contains only empty files; nothing to share")
    if piece_length is None:
        piece_length = auto_piece_length(data_total)
    elif piece_length < BLOCK_SIZE or piece_length & (piece_length - 1):
        raise MetainfoError(f"piece length {piece_length} must be a power of two >= 16 KiB")
    tiers = [[u for u in tier if u] for tier in trackers]
    tiers = [t for t in tiers if t]
    has_v1 = version is not TorrentVersion.V2
    has_v2 = version is not TorrentVersion.V1

    slots = _layout(sources, piece_length, aligned=has_v2)
    total = slots[-1].offset + slots[-1].length
    num_pieces = -(-total // piece_length)
    workers = max(1, threads or os.cpu_count() or 1)
    window = max(workers + 1, min(workers * 4, _MAX_BUFFERED // piece_length))

    sha1s: list[bytes] = [b""] * num_pieces
    layers: list[list[bytes]] = [[] for _ in sources]
    roots: list[bytes | None] = [None] * len(sources)
    fds: dict[int, int] = {}
    last_piece: dict[int, int] = {}
    free: list[bytearray] = []
    pending: deque[tuple[_Job, Future[tuple[bytes | None, bytes | None]], bytearray]] = deque()

    def finish() -> None:
        job, fut, buf = pending.popleft()
        sha1, v2 = fut.result()
        free.append(buf)
        if sha1 is not None:
            sha1s[job.index] = sha1
        if v2 is not None:
            if job.v2_small:
                roots[job.v2_file] = v2
            else:
                layers[job.v2_file].append(v2)
        for done in [k for k in fds if last_piece[k] <= job.index]:
            os.close(fds.pop(done))
        if progress is not None and job.data_bytes:
            progress(job.data_bytes)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        try:
            for job in _jobs(slots, sources, fds, piece_length, total, has_v2, last_piece):
                if len(pending) >= window:
                    finish()
                buf = free.pop() if free else bytearray(piece_length)
                fut = pool.submit(_hash_piece, job, buf, has_v1, piece_length)
                pending.append((job, fut, buf))
            while pending:
                finish()
        finally:
            for _, fut, _ in pending:
                fut.cancel()
            for _, fut, _ in pending:
                if not fut.cancelled():
                    fut.exception()  # wait: workers may still be reading from our fds
            for fd in fds.values():
                os.close(fd)
    elapsed = time.monotonic() - started
    log.info("hashed %d bytes of %s in %.2fs (%d threads)", data_total, name, elapsed, workers)

    piece_layers: dict[bytes, bytes] = {}
    for i, src in enumerate(sources):
        if has_v2 and src.length > piece_length:
            root = root_from_layer(layers[i], piece_length, src.length)
            roots[i] = root
            piece_layers[root] = b"".join(layers[i])

    info: dict[bytes, Any] = {b"name": name.encode(), b"piece length": piece_length}
    if private:
        info[b"private"] = 1
    if has_v1:
        info[b"pieces"] = b"".join(sha1s)
        if single:
            info[b"length"] = sources[0].length
            if sources[0].executable:
                info[b"attr"] = b"x"
        else:
            files = []
            for slot in slots:
                if slot.source < 0:
                    n = slot.length
                    files.append({b"attr": b"p", b"length": n, b"path": [b".pad", b"%d" % n]})
                    continue
                src = sources[slot.source]
                entry: dict[bytes, Any] = {
                    b"length": src.length,
                    b"path": [c.encode() for c in src.path],
                }
                if src.executable:
                    entry[b"attr"] = b"x"
                files.append(entry)
            info[b"files"] = files
    if has_v2:
        info[b"meta version"] = 2
        info[b"file tree"] = _tree(sources, roots)

    outer: dict[bytes, Any] = {b"info": info, b"creation date": int(time.time())}
    if tiers:
        outer[b"announce"] = tiers[0][0].encode()
    if len(tiers) > 1 or sum(map(len, tiers)) > 1:
        outer[b"announce-list"] = [[u.encode() for u in tier] for tier in tiers]
    if url_list:
        outer[b"url-list"] = [u.encode() for u in url_list if u]
    if piece_layers:
        outer[b"piece layers"] = piece_layers
    if comment:
        outer[b"comment"] = comment.encode()
    if created_by:
        outer[b"created by"] = created_by.encode()
    # Parsing our own output validates it and builds the Metainfo the same way as any
    # downloaded torrent (one code path for the piece-space layout).
    return load_torrent(bencode(outer))
