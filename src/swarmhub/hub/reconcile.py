"""The hub's data folder at start-up: private permissions, and storage matching the catalog.

Why at start-up: a publish writes in steps (temp file, blob, seed link, piece hashing,
catalog row, seeder resume data) and a ``kill -9`` or a power cut can stop it between
any two. Each step is atomic on its own, but the sequence is not, so leftovers are
swept once, before the hub accepts requests (nothing can be in flight then):

- ``tmp/``: every entry (an upload that never finished);
- ``blobs/``: every blob no catalog row references, and anything that is not a blob;
- ``seed/``: folders of files that are not catalogued, and entries in a file's folder
  other than its one link (the seeder re-links a missing or wrong-sized one);
- ``seed-state/``: half-written resume files (``.*.tmp``) and resume data of torrents
  the catalog does not know.

The catalog is the truth: a torrent exists only as a catalog row (torrents are stored
in it), so there is no half-written torrent on disk beyond the items above. A row whose
blob is missing cannot come from a crash (the blob is renamed into place and fsynced
before the row is written); when it happens anyway (a hand-deleted or lost blob) the
blob is restored from the file's seed link if that still holds the same bytes, and
otherwise the row is *kept* and reported: deleting catalog rows on start-up could wipe a
catalog whose blob folder is merely not mounted yet. Such a file answers 404 until the
blob is put back or the file is deleted (admin page, ``DELETE /api/files/{id}``), and
``/api/stats`` counts it as ``missing_blobs``.

Permissions: the data folder is 0700, every file directly in it (the catalog, its WAL
files, any secret) 0600, blobs 0400; existing installs are fixed by the same pass.

The sweep and the chmods act only on a hub's own folder: a folder that is not empty
and has no catalog (``--data ~`` by mistake) is refused, never "cleaned".
Because the sweep deletes what a running hub is writing, one data folder serves one hub:
:class:`DataDirLock` (``DATA/hub.lock``, an ``flock`` the kernel drops when the process
dies, even by ``kill -9``) makes a second hub on the same folder refuse to start.

Several hubs on one catalog (PostgreSQL) each keep their own data folder (lock, temp
files, seed links, resume data) and may share one blob folder (``--blobs``). Another
hub may have just renamed a blob into that folder and not yet written its catalog row,
so there an unreferenced blob is removed only once it is older than
:data:`SHARED_BLOB_GRACE` and the shared catalog, in the transaction that removes it,
neither references nor pins it (``CatalogBase.collect_blob``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swarmhub.errors import SwarmhubError
from swarmhub.hub.blobs import BLOB_MODE
from swarmhub.hub.catalog import CatalogBase, FileRecord

__all__ = [
    "CATALOG_NAME",
    "DataDirLock",
    "DataDirLocked",
    "NotAHubFolder",
    "ReconcileReport",
    "prepare_data_dir",
    "reconcile",
]

log = logging.getLogger(__name__)

#: Seconds an unreferenced blob in a shared blob folder is left alone (a publish on
#: another hub writes its catalog row within seconds of the blob).
SHARED_BLOB_GRACE = 3600.0

CATALOG_NAME = "catalog.sqlite3"
_PRIVATE_BITS = 0o077  # group and other
_HEX2 = re.compile(r"[0-9a-f]{2}")
_RESUME = re.compile(r"([0-9a-f]{40}|[0-9a-f]{64})-[0-9a-f]{12}\.resume")


@dataclass(slots=True)
class ReconcileReport:
    """What one start-up pass found and did."""

    temp_files: int = 0
    orphan_blobs: int = 0
    orphan_bytes: int = 0
    seed_entries: int = 0
    resume_files: int = 0
    restored_blobs: int = 0
    permissions_fixed: int = 0
    #: Ids of catalogued files whose blob is gone (kept in the catalog, see module doc).
    missing: list[str] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.temp_files + self.orphan_blobs + self.seed_entries + self.resume_files

    def summary(self) -> str:
        """The one log line of a start-up: what was removed, restored, missing or fixed."""
        parts = [
            (self.temp_files, "temp file(s)"),
            (self.orphan_blobs, f"orphan blob(s) of {self.orphan_bytes} bytes"),
            (self.seed_entries, "seed folder entr(ies)"),
            (self.resume_files, "stale resume file(s)"),
        ]
        removed = ", ".join(f"{n} {what}" for n, what in parts if n) or "nothing"
        line = f"storage check: removed {self.removed} leftover(s) ({removed})"
        if self.restored_blobs:
            line += f"; restored {self.restored_blobs} lost blob(s) from seed links"
        if self.missing:
            line += (f"; {len(self.missing)} file(s) have no blob and answer 404: "
                     + " ".join(self.missing[:20]) + (" ..." if len(self.missing) > 20 else ""))
        if self.permissions_fixed:
            line += f"; made {self.permissions_fixed} path(s) private"
        return line


class NotAHubFolder(SwarmhubError):
    """``--data`` names a folder with other things in it: the hub will not touch it."""


class DataDirLocked(SwarmhubError):
    """Another hub process is using this data folder."""


class DataDirLock:
    """An exclusive ``flock`` on ``DATA/hub.lock`` for as long as the hub runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "hub.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirLocked` naming the holder's PID."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirLocked(
                    f"another hub (pid {holder}) is using {self.path.parent}; stop it or "
                    "choose another --data"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _tighten(path: Path, mode: int | None = None) -> bool:
    """Drop group/other bits (or set ``mode``); True if the mode changed. Never follows links."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return False
    old = stat.S_IMODE(st.st_mode)
    new = old & ~_PRIVATE_BITS if mode is None else mode
    if new == old:
        return False
    os.chmod(path, new)
    return True


def prepare_data_dir(data_dir: Path) -> int:
    """Make ``data_dir`` private before anything is written to it; returns paths fixed.

    The folder becomes 0700 and each file directly in it 0600 (catalog, WAL files and
    any secret file kept there). The catalog is created empty with 0600 if missing, so
    that SQLite, which gives its ``-wal`` and ``-shm`` files the database's mode, never
    makes a readable one. Raises :class:`NotAHubFolder` for a non-empty folder without
    a catalog.
    """
    catalog = data_dir / CATALOG_NAME
    if data_dir.is_dir() and not catalog.exists() and any(data_dir.iterdir()):
        raise NotAHubFolder(
            f"{data_dir} is not empty and holds no hub catalog ({CATALOG_NAME}); "
            "choose a new or empty folder for --data"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fixed = int(_tighten(data_dir, 0o700))
    if not catalog.exists():
        os.close(os.open(catalog, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for entry in data_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            fixed += _tighten(entry)
    return fixed


def _remove(path: Path) -> int:
    """Delete a file or folder; returns the bytes of a removed file (0 for a folder)."""
    try:
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            return 0
        path.unlink()
        return st.st_size
    except FileNotFoundError:
        return 0


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _restore_blob(blob: Path, seed_file: Path, record: FileRecord) -> bool:
    """Put a lost blob back from the file's seed link when it holds the same bytes."""
    try:
        if seed_file.stat().st_size != record.size or _sha256_of(seed_file) != record.sha256:
            return False
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.link(seed_file, blob)
        os.chmod(blob, BLOB_MODE)
    except OSError:
        return False
    return True


def reconcile(
    data_dir: Path, catalog: CatalogBase, *, blob_root: Path | None = None,
    in_store: Callable[[str], bool] | None = None,
) -> ReconcileReport:
    """Bring ``data_dir`` in line with ``catalog`` (see the module doc); blocking, run once
    at start-up before the hub serves or seeds anything. ``blob_root``: a blob folder
    shared with other hubs (``--blobs``), swept with care. ``in_store``: with S3 the
    local folder is a cache, and a blob it lacks is missing only if S3 lacks it too."""
    report = ReconcileReport()
    report.permissions_fixed = prepare_data_dir(data_dir)
    records = catalog.all_files()
    shared = blob_root is not None and Path(blob_root).resolve() != data_dir.resolve()
    blob_dir = (blob_root if blob_root is not None else data_dir) / "blobs"
    seed_dir, tmp_dir = data_dir / "seed", data_dir / "tmp"

    def sweep(path: Path) -> int:
        """Remove an orphan; in a shared folder only an old one nobody references."""
        if shared:
            try:
                age = time.time() - path.lstat().st_mtime
            except FileNotFoundError:
                return 0
            if age < SHARED_BLOB_GRACE:
                return 0
            # Checked and removed under the blob's lock: a publish on another hub may be
            # about to rely on this very blob (CatalogBase.collect_blob).
            freed: list[int] = []
            if not catalog.collect_blob(path.name, lambda _: freed.append(_remove(path))):
                return 0
            report.orphan_blobs += 1
            return sum(freed)
        report.orphan_blobs += 1
        return _remove(path)

    if tmp_dir.is_dir():
        for entry in tmp_dir.iterdir():
            _remove(entry)
            report.temp_files += 1

    # Rows first: a lost blob may be restored from its seed link before seed/ is swept.
    referenced: set[str] = set()
    for record in records:
        blob = blob_dir / record.sha256[:2] / record.sha256
        if not blob.is_file():
            seed_file = seed_dir / record.id / record.name
            if _restore_blob(blob, seed_file, record):
                report.restored_blobs += 1
                log.warning("restored the lost blob of %s (%s) from its seed link",
                            record.id, record.name)
        referenced.add(record.sha256)
        if not blob.is_file() and (in_store is None or not in_store(record.sha256)):
            report.missing.append(record.id)
            log.warning(
                "file %s (%s) has no blob %s: it answers 404 until the blob is put back "
                "or the file is deleted", record.id, record.name, record.sha256)

    if blob_dir.is_dir():
        for sub in blob_dir.iterdir():
            if not (_HEX2.fullmatch(sub.name) and sub.is_dir() and not sub.is_symlink()):
                report.orphan_bytes += sweep(sub)
                continue
            report.permissions_fixed += _tighten(sub)
            for entry in sub.iterdir():
                if entry.name in referenced and entry.name[:2] == sub.name and entry.is_file():
                    report.permissions_fixed += _tighten(entry, BLOB_MODE)
                else:
                    report.orphan_bytes += sweep(entry)
            with contextlib.suppress(OSError):
                sub.rmdir()  # only when empty

    by_id = {r.id: r for r in records}
    if seed_dir.is_dir():
        for folder in seed_dir.iterdir():
            owner = by_id.get(folder.name)
            if owner is None or folder.is_symlink() or not folder.is_dir():
                _remove(folder)
                report.seed_entries += 1
                continue
            report.permissions_fixed += _tighten(folder)
            for entry in folder.iterdir():
                keep = entry.name == owner.name and entry.is_file() and not entry.is_symlink()
                if keep and entry.stat().st_size == owner.size:
                    report.permissions_fixed += _tighten(entry)
                else:
                    _remove(entry)  # the seeder links the blob again on start
                    report.seed_entries += 1

    state_dir = data_dir / "seed-state"
    if state_dir.is_dir():
        known: set[str] = set()
        for r in records:
            for h in (r.info_hash_v1, r.info_hash_v2, r.info_hash_v1_torrent):
                if h is not None:
                    known.update((h.hex(), h[:20].hex()))
        for entry in state_dir.iterdir():
            m = _RESUME.fullmatch(entry.name)
            half_written = entry.name.startswith(".") and entry.name.endswith(".tmp")
            if half_written or (m is not None and m.group(1) not in known):
                _remove(entry)
                report.resume_files += 1
    return report
