"""Torrent data on disk: the piece space mapped onto files with pread/pwrite.

Why not mmap: libtorrent's mmap storage is its users' most common complaint (page cache
pressure, SIGBUS on a full disk, address-space exhaustion). Positional reads and writes on
a bounded LRU of open descriptors keep memory flat and turn a full disk into an ordinary
:class:`~swarmhub.errors.StorageError`.

Layout: a single-file torrent lives at ``save_path/name``; a multi-file torrent at
``save_path/name/<path components>``. Pads (explicit BEP 47 entries or the gaps implied
by BEP 52 alignment) read as zeros and are never written.

Chosen files: with :meth:`TorrentStorage.set_selection`, an unchosen file that is not on
disk is *parked*: it is never created, and its bytes of the pieces we download anyway (a
piece shared with a chosen file must be fetched and verified whole) go to a sparse *part
file*, ``save_path/.swarmhub.parts/<info hash>``, at their piece-space offset (libtorrent
keeps such bytes in its "part file" the same way). Reads of a parked file's range read
the part file (zeros where nothing was written). When a parked file is chosen later, it
is created and the bytes the part file holds for it (its first and last piece: only edge
pieces are ever written there) are copied in; once no file is parked the part file goes.
An unchosen file that already exists is used as is.

Safety: every open walks the path one component at a time with ``openat`` and
``O_NOFOLLOW``, so nothing below ``save_path`` may be a symlink and nothing can escape it,
even if a hostile torrent slipped past the parser's path checks (the last line of defence).

Direct writes (``direct_writes=True``, the engine's default): the page-aligned run of a
write whose buffer, file offset and length are aligned (every piece of a download, in the
buffers :func:`piece_buffer` makes) goes through a second descriptor opened with
``O_DIRECT``: the disk reads our buffer, with no copy into the page cache. That copy was
over half of a loopback download's CPU (2.0 of 3.5 CPU-s per GiB on a 2-core VM, where
fresh page-cache pages are dear) and its dirty pages were written back later anyway. Any
other write, a file system that refuses ``O_DIRECT`` (tmpfs) or a buffer it rejects goes
through the page cache as before. Reads always do (uploads profit from the cache).

Thread safety: all methods may be called concurrently from a thread pool. Descriptors are
reference-counted, so evicting one from the LRU never closes it under a running pread.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import mmap
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from swarmhub.errors import StorageError
from swarmhub.metainfo.model import FileEntry, Metainfo

__all__ = ["DIRECT_ALIGN", "PARTS_DIR", "PieceBuffer", "TorrentStorage", "piece_buffer"]

#: Folder (in the download folder) of the part files of partially chosen torrents.
PARTS_DIR = ".swarmhub.parts"

log = logging.getLogger(__name__)

_ZEROS = bytes(1 << 20)
#: preadv flag: fail with EAGAIN instead of waiting for the disk (Linux 4.14+); 0 where
#: there is none, or once a file system refused it (then every read_cached is False)
_NOWAIT = [getattr(os, "RWF_NOWAIT", 0)]
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Offset, length and address alignment of a direct write (the largest logical block size).
DIRECT_ALIGN = 4096
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_UNTRIED, _UNSUPPORTED = -2, -1

#: A piece's buffer: ``bytearray`` works everywhere; :func:`piece_buffer`'s is page-aligned.
PieceBuffer = bytearray | mmap.mmap


def piece_buffer(size: int) -> mmap.mmap:
    """A zeroed, page-aligned buffer of ``size`` bytes (anonymous memory), which direct
    writes can take as it is."""
    return mmap.mmap(-1, max(1, size))


class _Handle:
    """One open descriptor, shared by readers and writers, closed when the last one leaves."""

    __slots__ = ("direct", "fd", "retired", "users", "writable")

    def __init__(self, fd: int, writable: bool) -> None:
        self.fd = fd
        self.writable = writable
        self.users = 0
        self.retired = False
        #: an O_DIRECT descriptor of the same file, once opened (or _UNTRIED/_UNSUPPORTED)
        self.direct = _UNTRIED

    def close(self) -> None:
        os.close(self.fd)
        if self.direct >= 0:
            os.close(self.direct)


class _SharedLock:
    """Many writers at once, or one selection change alone: a write routed to the part
    file must land before a promotion copies the part file (or its bytes would be lost)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    def try_shared(self) -> bool:
        """Take a shared hold unless a selection change holds the lock (never waits);
        True when taken (then :meth:`release_shared`)."""
        with self._cond:
            if self._exclusive:
                return False
            self._shared += 1
            return True

    def release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if not self._shared:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _zero_fill(view: memoryview) -> None:
    pos, n = 0, len(view)
    while pos < n:
        chunk = min(n - pos, len(_ZEROS))
        view[pos : pos + chunk] = _ZEROS[:chunk]
        pos += chunk


class TorrentStorage:
    """Reads and writes a torrent's piece space on disk (blocking; call from threads)."""

    def __init__(
        self,
        meta: Metainfo,
        save_path: str | os.PathLike[str],
        *,
        max_open_files: int = 64,
        direct_writes: bool = False,
    ) -> None:
        if max_open_files < 1:
            raise ValueError("max_open_files must be at least 1")
        self.meta = meta
        #: write aligned runs with O_DIRECT where the file system allows it
        self.direct_writes = direct_writes and bool(_O_DIRECT)
        self.save_path = Path(save_path)
        self.max_open_files = max_open_files
        #: Data files in piece-space order (pads excluded, empty files included).
        self.data_files: tuple[FileEntry, ...] = meta.data_files
        # Non-empty data files sorted by offset, for bisecting a piece-space range.
        self._mapped = [i for i, f in enumerate(self.data_files) if f.length > 0]
        self._mapped.sort(key=lambda i: self.data_files[i].offset)
        self._starts = [self.data_files[i].offset for i in self._mapped]
        # All non-empty entries (pads too), for files_for_range.
        self._all = sorted((f for f in meta.files if f.length > 0), key=lambda f: f.offset)
        self._all_starts = [f.offset for f in self._all]
        self._components = [self._path_components(f) for f in self.data_files]
        self._lock = threading.Lock()
        self._handles: OrderedDict[int, _Handle] = OrderedDict()
        self._create = False
        self._dirty: set[int] = set()
        #: data files kept out of the folder (chosen by nobody, absent on disk)
        self._parked: frozenset[int] = frozenset()
        self._selection_lock = _SharedLock()
        self._wanted: tuple[bool, ...] | None = None
        #: the part file, opened through the same safe-open path as a data file
        self._parts_index = len(self.data_files)
        self._components.append((PARTS_DIR, meta.info_hash.hex()))

    # -- paths -------------------------------------------------------------------------

    def _path_components(self, entry: FileEntry) -> tuple[str, ...]:
        parts = (self.meta.name,) if self.meta.single_file else (self.meta.name, *entry.path)
        for part in parts:
            if part in ("", ".", "..") or "/" in part or "\0" in part:
                raise StorageError(
                    f"refusing unsafe path component {part!r} in {'/'.join(parts)!r}"
                )
        return parts

    def file_path(self, entry: FileEntry) -> Path:
        """Where ``entry`` lives on disk (pads have no place on disk)."""
        if entry.pad:
            raise ValueError(f"pad file {'/'.join(entry.path)} has no path on disk")
        return self.save_path.joinpath(*self._path_components(entry))

    def _check_containment(self, index: int) -> Path:
        path = self.save_path.joinpath(*self._components[index])
        root = os.path.realpath(self.save_path)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root or real == root:
            raise StorageError(f"refusing to access {path}: it resolves outside {root}")
        return path

    # -- descriptors -------------------------------------------------------------------

    def _open_fd(self, index: int, write: bool) -> _Handle:
        """Open data file ``index`` via openat/O_NOFOLLOW from save_path (lock held)."""
        path = self._check_containment(index)
        parts = self._components[index]
        create = write and self._create
        try:
            if create:
                os.makedirs(self.save_path, exist_ok=True)
            dir_fd = os.open(self.save_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error("open folder", self.save_path, exc) from None
        try:
            for part in parts[:-1]:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=dir_fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            base = os.O_CLOEXEC | os.O_NOFOLLOW
            if write:
                flags = base | os.O_RDWR | (os.O_CREAT if create else 0)
                fd = os.open(parts[-1], flags, 0o666, dir_fd=dir_fd)
                writable = True
            elif self._create:
                try:
                    fd = os.open(parts[-1], base | os.O_RDWR, dir_fd=dir_fd)
                    writable = True
                except OSError as exc:
                    if exc.errno not in _NOT_WRITABLE:
                        raise
                    fd = os.open(parts[-1], base | os.O_RDONLY, dir_fd=dir_fd)
                    writable = False
            else:
                fd = os.open(parts[-1], base | os.O_RDONLY, dir_fd=dir_fd)
                writable = False
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StorageError(
                    f"refusing to open {path}: a component is a symlink or not a folder"
                ) from None
            if exc.errno == errno.ENOENT:
                raise StorageError(f"missing file {path}: recheck or download it again") from None
            raise self._error("open", path, exc) from None
        finally:
            os.close(dir_fd)
        return _Handle(fd, writable)

    def _acquire(self, index: int, write: bool) -> _Handle:
        with self._lock:
            handle = self._handles.get(index)
            if handle is not None and (handle.writable or not write):
                self._handles.move_to_end(index)
            else:
                if handle is not None:  # read-only handle, a write needs a new one
                    self._retire(index)
                handle = self._open_fd(index, write)
                self._handles[index] = handle
                while len(self._handles) > self.max_open_files:
                    self._retire(next(iter(self._handles)))
            handle.users += 1
            return handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            if handle.retired and handle.users == 0:
                handle.close()

    def _retire(self, index: int) -> None:
        """Drop ``index`` from the LRU; close now or when its last user leaves (lock held)."""
        handle = self._handles.pop(index)
        handle.retired = True
        if handle.users == 0:
            handle.close()

    def _error(self, op: str, path: Path | str, exc: OSError) -> StorageError:
        if exc.errno in _DISK_FULL:
            return StorageError(f"disk full while writing {path}: {exc.strerror}")
        hint = ("; choose a folder you can write to (-o DIR)"
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "")
        return StorageError(f"cannot {op} {path}: {exc.strerror or exc}{hint}")

    # -- lifecycle ---------------------------------------------------------------------

    def open(self, create: bool = True) -> None:
        """Prepare the files; with ``create`` make missing folders and sparse files.

        Existing files shorter than their entry are extended (sparse) so later reads of
        unwritten ranges see zeros instead of a short read; longer files are left alone.
        Without ``create`` nothing on disk changes and data is opened read-only.
        """
        self._create = create
        if not create:
            return
        with self._selection_lock.exclusive():
            self._apply_selection()
        for index, entry in enumerate(self.data_files):
            if index in self._parked:
                continue
            handle = self._acquire(index, write=True)
            path = self.save_path.joinpath(*self._components[index])
            try:
                if os.fstat(handle.fd).st_size < entry.length:
                    os.ftruncate(handle.fd, entry.length)
            except OSError as exc:
                raise self._error("set the size of", path, exc) from None
            finally:
                self._release(handle)

    def sync(self) -> None:
        """fsync every file written since the last sync (call before saving resume data).

        Files whose descriptor was evicted from the LRU are reopened: fsync flushes the
        inode, whichever descriptor it is called on.
        """
        with self._lock:
            dirty, self._dirty = sorted(self._dirty), set()
        for pos, index in enumerate(dirty):
            try:
                handle = self._acquire(index, write=False)
                try:
                    os.fsync(handle.fd)
                finally:
                    self._release(handle)
            except (OSError, StorageError) as exc:
                with self._lock:
                    self._dirty.update(dirty[pos:])
                if isinstance(exc, StorageError):
                    raise
                path = self.save_path.joinpath(*self._components[index])
                raise self._error("fsync", path, exc) from None

    def close(self) -> None:
        """Close all descriptors; files reopen lazily if the storage is used again."""
        with self._lock:
            for index in list(self._handles):
                self._retire(index)

    def __enter__(self) -> TorrentStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- mapping -----------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.meta.total_length:
            raise StorageError(
                f"range {offset}+{length} is outside the torrent (0..{self.meta.total_length})"
            )

    def _segments(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """(data file index, file offset, position in the range, length) for real data."""
        self._check_range(offset, length)
        end = offset + length
        out: list[tuple[int, int, int, int]] = []
        k = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while k < len(self._mapped):
            index = self._mapped[k]
            entry = self.data_files[index]
            if entry.offset >= end:
                break
            lo, hi = max(offset, entry.offset), min(end, entry.end)
            if lo < hi:
                if self._parked and index in self._parked:  # its bytes live in the part file
                    out.append((self._parts_index, lo, lo - offset, hi - lo))
                else:
                    out.append((index, lo - entry.offset, lo - offset, hi - lo))
            k += 1
        return out

    def files_for_range(self, offset: int, length: int) -> list[tuple[FileEntry, int, int]]:
        """The entries (pads included, check ``entry.pad``) covering a piece-space range.

        Each item is ``(entry, offset inside the entry, length)``. Gaps implied by BEP 52
        alignment without explicit pad entries are simply not listed.
        """
        self._check_range(offset, length)
        end = offset + length
        out: list[tuple[FileEntry, int, int]] = []
        k = max(0, bisect.bisect_right(self._all_starts, offset) - 1)
        for entry in self._all[k:]:
            if entry.offset >= end:
                break
            lo, hi = max(offset, entry.offset), min(end, entry.end)
            if lo < hi:
                out.append((entry, lo - entry.offset, hi - lo))
        return out

    def _piece_range(self, index: int, begin: int, length: int) -> int:
        size = self.meta.piece_size(index)
        if begin < 0 or length < 0 or begin + length > size:
            raise StorageError(f"block {begin}+{length} is outside piece {index} (size {size})")
        return index * self.meta.piece_length + begin

    # -- reading -----------------------------------------------------------------------

    def _pread_into(self, index: int, view: memoryview, file_offset: int) -> bool:
        """One segment of :meth:`read_into`; True (a failure raises)."""
        handle = self._acquire(index, write=False)
        try:
            pos = 0
            while pos < len(view):
                got = os.preadv(handle.fd, [view[pos:]], file_offset + pos)
                if got == 0 and index == self._parts_index:
                    _zero_fill(view[pos:])  # sparse: never written there
                    return True
                if got == 0:
                    path = self.save_path.joinpath(*self._components[index])
                    raise StorageError(
                        f"file {path} is shorter than expected "
                        f"({file_offset + pos} < {self.data_files[index].length} bytes)"
                    )
                pos += got
        except OSError as exc:
            path = self.save_path.joinpath(*self._components[index])
            raise self._error("read", path, exc) from None
        finally:
            self._release(handle)
        return True

    def read_into(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with the piece-space bytes at ``offset`` (reusable buffers)."""
        self._fill(offset, buf, self._pread_into)

    def _fill(self, offset: int, buf: bytearray | memoryview,
              read: Callable[[int, memoryview, int], bool]) -> bool:
        """Fill ``buf`` from ``offset``: pads as zeros, each file's segment by ``read``
        (file index, its part of ``buf``, offset in the file); False as soon as one
        ``read`` is (``buf`` then holds garbage)."""
        view = _as_bytes_view(buf)
        pos = 0
        for index, file_offset, at, n in self._segments(offset, len(view)):
            if at > pos:
                _zero_fill(view[pos:at])
            if not read(index, view[at : at + n], file_offset):
                return False
            pos = at + n
        if pos < len(view):
            _zero_fill(view[pos:])
        return True

    def read_cached(self, offset: int, buf: bytearray | memoryview) -> bool:
        """:meth:`read_into` only if that waits for nothing: every file open already and
        every byte in the page cache (``RWF_NOWAIT``); False otherwise (``buf`` then holds
        garbage), and always where the kernel cannot tell. Safe on the event loop.

        Why: a seed reads each piece it uploads once, mostly from the page cache; on the
        disk pool each read was a thread wake-up each way and a chain of futures (loopback,
        a super-seed and 16 clients: ~0.1 ms of the seed's CPU per 32 KiB piece), and
        the serving peer's task had to wait for it instead of the blocks going out from
        the receive callback."""
        return bool(_NOWAIT[0]) and self._fill(offset, buf, self._pread_cached)

    def _pread_cached(self, index: int, view: memoryview, file_offset: int) -> bool:
        """One segment of :meth:`read_cached`: through a descriptor open already (the lock
        only if free: a disk thread may hold it while it opens a file)."""
        flag = _NOWAIT[0]
        if not flag or not self._lock.acquire(blocking=False):
            return False
        try:
            handle = self._handles.get(index)
            if handle is None:
                return False
            self._handles.move_to_end(index)
            handle.users += 1
        finally:
            self._lock.release()
        try:
            got = os.preadv(handle.fd, [view], file_offset, flag)
        except OSError as exc:  # EAGAIN: not cached (the disk pool reads it)
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                _NOWAIT[0] = 0  # this kernel or file system cannot say: never again
            return False
        finally:
            self._release(handle)
        return got == len(view)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the piece space; pads read as zeros, a missing file is an error."""
        segments = self._segments(offset, length)
        if len(segments) == 1 and segments[0][3] == length:
            index, file_offset, _, _ = segments[0]
            handle = self._acquire(index, write=False)
            try:
                data = os.pread(handle.fd, length, file_offset)
            except OSError as exc:
                path = self.save_path.joinpath(*self._components[index])
                raise self._error("read", path, exc) from None
            finally:
                self._release(handle)
            if len(data) == length:
                return data
        buf = bytearray(length)
        self.read_into(offset, buf)
        return bytes(buf)

    def read_block(self, index: int, begin: int, length: int) -> bytes:
        """``length`` bytes at ``begin`` inside piece ``index`` (a wire REQUEST)."""
        return self.read(self._piece_range(index, begin, length), length)

    def read_piece(self, index: int) -> bytes:
        """The whole piece ``index`` (pads as zeros), ready for :class:`PieceVerifier`."""
        return self.read(index * self.meta.piece_length, self.meta.piece_size(index))

    # -- writing -----------------------------------------------------------------------

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write piece-space bytes; the parts that fall on pads are dropped."""
        with self._selection_lock.shared():
            self._write(offset, data)

    def write_now(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """:meth:`write` through the page cache (no ``O_DIRECT``, which waits for the
        device), for a caller that must not wait (the event loop, a small piece): False,
        nothing written, while a selection change holds the files (then use :meth:`write`
        from a pool)."""
        lock = self._selection_lock
        if not lock.try_shared():
            return False
        try:
            self._write(offset, data, direct=False)
        finally:
            lock.release_shared()
        return True

    def _write(self, offset: int, data: bytes | bytearray | memoryview,
               direct: bool = True) -> None:
        view = _as_bytes_view(data)
        direct = direct and self.direct_writes
        for index, file_offset, at, n in self._segments(offset, len(view)):
            handle = self._acquire(index, write=True)
            try:
                done = 0
                if direct and n >= DIRECT_ALIGN and index != self._parts_index:
                    done = self._write_direct(handle, view[at : at + n], file_offset)
                while done < n:
                    wrote = os.pwrite(handle.fd, view[at + done : at + n], file_offset + done)
                    if wrote <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    done += wrote
            except OSError as exc:  # (the path only then: a pathlib join per piece was
                # ~1.6 % of a lab peer's cProfile, one write per 32 KiB piece)
                path = self.save_path.joinpath(*self._components[index])
                raise self._error("write", path, exc) from None
            finally:
                with self._lock:
                    self._dirty.add(index)
                self._release(handle)

    @staticmethod
    def _write_direct(handle: _Handle, view: memoryview, file_offset: int) -> int:
        """Write the aligned head of ``view`` at ``file_offset`` with O_DIRECT; returns the
        bytes written (0: nothing, the caller writes it all through the page cache)."""
        if file_offset % DIRECT_ALIGN:
            return 0
        if handle.direct == _UNTRIED:
            try:  # the very file we have open, whatever its path has become since
                handle.direct = os.open(
                    f"/proc/self/fd/{handle.fd}", os.O_WRONLY | os.O_CLOEXEC | _O_DIRECT
                )
            except OSError:
                handle.direct = _UNSUPPORTED  # tmpfs, no /proc, ...: the page cache it is
        if handle.direct < 0:
            return 0
        try:
            return os.pwrite(handle.direct, view[: len(view) - len(view) % DIRECT_ALIGN],
                             file_offset)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a buffer that is not page-aligned
                return 0
            raise

    def write_block(self, index: int, begin: int, data: bytes | bytearray | memoryview) -> None:
        """Write a received block (a wire PIECE message) at ``begin`` inside piece ``index``."""
        self.write(self._piece_range(index, begin, memoryview(data).nbytes), data)

    # -- chosen files ------------------------------------------------------------------------

    def is_parked(self, index: int) -> bool:
        """Whether data file ``index`` is kept out of the folder (see the module docstring)."""
        return index in self._parked

    @property
    def parts_path(self) -> Path:
        return self.save_path.joinpath(*self._components[self._parts_index])

    def set_selection(self, wanted: tuple[bool, ...] | list[bool] | None) -> None:
        """Which data files the user chose (None: all). Unchosen files absent on disk are
        parked; newly chosen parked files are created with what the part file holds for
        them (when the storage is open for writing; else at :meth:`open`)."""
        if wanted is not None and len(wanted) != len(self.data_files):
            raise ValueError(f"{len(wanted)} choices for {len(self.data_files)} files")
        with self._selection_lock.exclusive():
            self._wanted = None if wanted is None or all(wanted) else tuple(wanted)
            if self._create:
                self._apply_selection()
            else:
                self._parked = frozenset(
                    i for i in self._unwanted() if not self._on_disk(i))

    def _unwanted(self) -> list[int]:
        w = self._wanted
        return [] if w is None else [i for i, ok in enumerate(w) if not ok]

    def _on_disk(self, index: int) -> bool:
        path = self.save_path.joinpath(*self._components[index])
        return os.path.lexists(path)

    def _apply_selection(self) -> None:
        parked = frozenset(i for i in self._unwanted()
                           if i in self._parked or not self._on_disk(i))
        has_parts = os.path.exists(self.parts_path)
        promote = [i for i in range(len(self.data_files)) if i not in parked
                   and (i in self._parked or not self._on_disk(i))] if has_parts else []
        self._parked = parked
        for index in promote:
            self._promote(index)
        if not parked and has_parts:
            with contextlib.suppress(OSError):
                self._retire_if_open(self._parts_index)
                os.unlink(self.parts_path)

    def _retire_if_open(self, index: int) -> None:
        with self._lock:
            if index in self._handles:
                self._retire(index)

    def _promote(self, index: int) -> None:
        """Create data file ``index`` and copy in its bytes held by the part file (its
        first and last piece are the only ones that can be there)."""
        entry = self.data_files[index]
        handle = self._acquire(index, write=True)
        try:
            if os.fstat(handle.fd).st_size < entry.length:
                os.ftruncate(handle.fd, entry.length)
        except OSError as exc:
            raise self._error("set the size of", self.file_path(entry), exc) from None
        finally:
            self._release(handle)
        if not entry.length:
            return
        pl = self.meta.piece_length
        first_end = min(entry.end, (entry.offset // pl + 1) * pl)
        last_start = max(entry.offset, (entry.end - 1) // pl * pl)
        ranges = {(entry.offset, first_end), (last_start, entry.end)}
        for lo, hi in sorted(ranges):
            buf = bytearray(hi - lo)
            self._pread_into(self._parts_index, memoryview(buf), lo)
            if not any(buf):
                continue  # a hole: nothing was kept for this range
            self._write(lo, buf)  # no longer parked: goes to the file

    # -- inspection --------------------------------------------------------------------

    def _stats(self) -> list[os.stat_result | None]:
        """Per data file; a parked file shows the part file's (so resume trust of its
        edge pieces follows the part file)."""
        out: list[os.stat_result | None] = []
        for index in range(len(self.data_files)):
            shown = self._parts_index if index in self._parked else index
            path = self.save_path.joinpath(*self._components[shown])
            try:
                st = os.lstat(path)
            except OSError:
                out.append(None)
                continue
            out.append(st if stat.S_ISREG(st.st_mode) else None)
        return out

    def exists(self) -> bool:
        """True when at least one data file is on disk (so a recheck is worth doing)."""
        return any(st is not None for st in self._stats())

    def sizes(self) -> tuple[int, ...]:
        """On-disk size of each data file (``data_files`` order); -1 when missing."""
        return tuple(-1 if st is None else st.st_size for st in self._stats())

    def mtimes(self) -> tuple[int, ...]:
        """Modification time (ns) of each data file (``data_files`` order); -1 when missing."""
        return tuple(-1 if st is None else st.st_mtime_ns for st in self._stats())

    def stat_files(self) -> tuple[tuple[int, int], ...]:
        """``(size, mtime_ns)`` of each data file in one pass; ``(-1, -1)`` when missing."""
        return tuple(
            (-1, -1) if st is None else (st.st_size, st.st_mtime_ns) for st in self._stats()
        )
