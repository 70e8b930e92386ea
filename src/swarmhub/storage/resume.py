"""Resume data: which pieces we have, saved atomically, trusted only while files are unchanged.

The file is bencoded (``swarmhub.bencode``) and replaced atomically: write a temporary
file in the same folder, fsync it, ``os.replace`` it over the old one, fsync the folder. A
crash at any point leaves either the old or the new file, never a torn one. On load, a
missing or corrupt file is simply "no resume data" (a recheck follows), never an error.

Pieces are trusted on restart only while every file they touch has the size and mtime
recorded when the resume data was saved; other pieces keep their trust.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmhub._records import value_methods
from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import BencodeError, StorageError
from swarmhub.metainfo.model import Metainfo
from swarmhub.storage.files import TorrentStorage

__all__ = [
    "ResumeData",
    "load_resume",
    "make_resume",
    "pack_bits",
    "resume_path",
    "save_resume",
    "trusted_pieces",
    "unpack_bits",
]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
# bytearray of 0/1 values <-> ASCII "0"/"1" (any nonzero value counts as set).
_TO_ASCII = bytes([0x30] + [0x31] * 255)
_FROM_ASCII = bytes(0 if i == 0x30 else 1 for i in range(256))


def pack_bits(bits: bytes | bytearray) -> bytes:
    """Pack one byte per piece (0 or nonzero) into a BEP 3 bitfield (piece 0 = high bit).

    Spare bits at the end are zero. Works through ``int(…, 2)`` so the loop is in C.
    """
    n = len(bits)
    if n == 0:
        return b""
    nbytes = (n + 7) // 8
    text = bits.translate(_TO_ASCII) + b"0" * (nbytes * 8 - n)
    return int(text, 2).to_bytes(nbytes, "big")


def unpack_bits(data: bytes | bytearray, n: int) -> bytearray:
    """Unpack the first ``n`` bits of a BEP 3 bitfield into one 0/1 byte per piece."""
    if n < 0 or len(data) * 8 < n:
        raise ValueError(f"a bitfield of {len(data)} bytes cannot hold {n} bits")
    if n == 0:
        return bytearray()
    nbytes = (n + 7) // 8
    text = format(int.from_bytes(data[:nbytes], "big"), f"0{nbytes * 8}b").encode("ascii")
    return bytearray(text[:n].translate(_FROM_ASCII))


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ResumeData:
    """What a torrent had on disk when it was last saved.

    ``file_sizes`` and ``file_mtimes`` (nanoseconds) follow ``Metainfo.data_files``;
    -1 marks a file that was missing. ``extra`` carries engine fields (str keys; values
    bytes, int, lists or dicts with bytes keys) that this module stores unchanged.
    """

    info_hash: bytes
    #: Packed bitfield (BEP 3 bit order), see :func:`pack_bits`.
    have: bytes
    file_sizes: tuple[int, ...]
    file_mtimes: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def resume_path(state_dir: str | os.PathLike[str], info_hash: bytes) -> Path:
    """Where the resume data of ``info_hash`` lives inside ``state_dir``."""
    return Path(state_dir) / f"{info_hash.hex()}.resume"


def make_resume(
    meta: Metainfo,
    storage: TorrentStorage,
    have: bytes | bytearray,
    extra: dict[str, Any] | None = None,
    *,
    sync: bool = True,
) -> ResumeData:
    """Snapshot ``have`` (one 0/1 byte per piece) with the files' current size and mtime.

    Syncs the storage first: a piece may only be claimed once its bytes are durable.
    ``sync=False``: the caller makes them durable itself before the record is in place
    (:func:`save_resume`'s ``before_replace``, overlapped with the record's own fsync).
    """
    if len(have) != meta.num_pieces:
        raise ValueError(f"have has {len(have)} entries, the torrent {meta.num_pieces} pieces")
    if sync:
        storage.sync()
    stats = storage.stat_files()
    return ResumeData(
        info_hash=meta.info_hash,
        have=pack_bits(have),
        file_sizes=tuple(s for s, _ in stats),
        file_mtimes=tuple(m for _, m in stats),
        extra=dict(extra or {}),
    )


def _encode(data: ResumeData) -> bytes:
    return bencode(
        {
            b"version": _FORMAT_VERSION,
            b"info-hash": data.info_hash,
            b"have": data.have,
            b"file-sizes": list(data.file_sizes),
            b"file-mtimes": list(data.file_mtimes),
            b"extra": {k.encode("utf-8"): v for k, v in data.extra.items()},
        }
    )


def save_resume(path: str | os.PathLike[str], data: ResumeData, *,
                before_replace: Callable[[], None] | None = None,
                sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync the folder).

    ``before_replace`` runs once the temp file is durable and before it takes ``path``'s
    place; an error it raises leaves the previous file (the temp one is removed). Give it
    the wait for the data's own sync, started beforehand on another thread: the two
    fsyncs then overlap (on ext4 they share one journal commit) where one after the other
    they cost two. ``sync_folder=False`` leaves the rename's durability to the file system
    (ext4 commits it within seconds): safe whenever an older record is never wrong, only
    behind (resume data: a crash just then rechecks what the lost record claimed; a
    killed process loses nothing), and one journal commit less to wait for."""
    path = Path(path)
    try:
        payload = _encode(data)
    except BencodeError as exc:
        raise StorageError(f"cannot encode resume data for {path}: {exc}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write resume data {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write resume data {path}: {exc.strerror or exc}") from None
        raise
    if not sync_folder:
        return
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:  # the rename happened; durability of it is best effort
        log.warning("could not fsync folder %s: %s", path.parent, exc)


def _int_tuple(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError("expected a list of integers")
    return tuple(value)


def load_resume(path: str | os.PathLike[str]) -> ResumeData | None:
    """The resume data at ``path``; None when missing or unreadable (logged, never raised)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring unreadable resume data %s: %s", path, exc)
        return None
    try:
        doc = bdecode(raw)
        if not isinstance(doc, dict) or doc.get(b"version") != _FORMAT_VERSION:
            raise ValueError("not a swarmhub resume file of a known version")
        info_hash, have, extra = doc[b"info-hash"], doc[b"have"], doc.get(b"extra", {})
        if not isinstance(info_hash, bytes) or len(info_hash) not in (20, 32):
            raise ValueError("bad info-hash")
        if not isinstance(have, bytes) or not isinstance(extra, dict):
            raise ValueError("bad have or extra")
        sizes, mtimes = _int_tuple(doc[b"file-sizes"]), _int_tuple(doc[b"file-mtimes"])
        if len(sizes) != len(mtimes):
            raise ValueError("file-sizes and file-mtimes differ in length")
        return ResumeData(
            info_hash=info_hash,
            have=have,
            file_sizes=sizes,
            file_mtimes=mtimes,
            extra={k.decode("utf-8"): v for k, v in extra.items()},
        )
    except (BencodeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring corrupt resume data %s: %s", path, exc)
        return None


def trusted_pieces(data: ResumeData, meta: Metainfo, storage: TorrentStorage) -> bytearray:
    """One 0/1 byte per piece: the pieces ``data`` claims whose files are unchanged.

    A file whose size or mtime differs from the record (or that is now missing) drops
    the trust of exactly the pieces it touches; the engine rechecks those. Resume data of
    another torrent, or with a different file count, trusts nothing.
    """
    n = meta.num_pieces
    files = storage.data_files
    if (
        data.info_hash != meta.info_hash
        or len(data.file_sizes) != len(files)
        or len(data.have) != (n + 7) // 8
    ):
        return bytearray(n)
    have = unpack_bits(data.have, n)
    pl = meta.piece_length
    now = storage.stat_files()
    for index, (entry, size, mtime, (cur_size, cur_mtime)) in enumerate(zip(
        files, data.file_sizes, data.file_mtimes, now, strict=True
    )):
        if entry.length == 0:
            continue
        # a parked (unchosen) file shows the part file's size and mtime
        short = cur_size < entry.length and not storage.is_parked(index)
        if size != cur_size or mtime != cur_mtime or short:
            first, last = entry.offset // pl, (entry.end - 1) // pl
            have[first : last + 1] = bytes(last + 1 - first)
    return have
