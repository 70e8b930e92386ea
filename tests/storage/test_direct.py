"""Direct writes: aligned runs of page-aligned piece buffers go through an O_DIRECT
descriptor, everything else (unaligned buffers, file offsets, short tails, file systems
that refuse O_DIRECT) through the page cache; the bytes on disk are the same either way."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest
from helpers import Torrent, file_path, make_torrent

from conftest import need
from swarmhub.errors import StorageError
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.storage import TorrentStorage
from swarmhub.storage import files as files_mod
from swarmhub.storage.files import DIRECT_ALIGN, piece_buffer

PIECE = 64 * 1024


def supports_direct(folder: Path) -> bool:
    """Whether the file system under ``folder`` takes O_DIRECT opens (tmpfs does not)."""
    probe = folder / ".direct-probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    os.close(fd)
    return hasattr(os, "O_DIRECT")


def write_pieces(t: Torrent, st: TorrentStorage, *, aligned: bool) -> None:
    pl = t.meta.piece_length
    for index in range(t.meta.num_pieces):
        size = t.meta.piece_size(index)
        data = t.space[index * pl : index * pl + size]
        buf = piece_buffer(size) if aligned else bytearray(size)
        buf[:size] = data
        st.write(index * pl, memoryview(buf)[:size])


def direct_used(st: TorrentStorage) -> bool:
    return any(h.direct >= 0 for h in st._handles.values())


@pytest.mark.parametrize("aligned", [True, False], ids=["piece-buffers", "bytearrays"])
@pytest.mark.parametrize(
    "version", [TorrentVersion.V1, TorrentVersion.V2, TorrentVersion.HYBRID], ids=str
)
def test_files_hold_the_same_bytes_with_direct_writes(
    tmp_path: Path, version: TorrentVersion, aligned: bool
) -> None:
    # Files that end mid-piece and mid-page, an empty one, a short last piece.
    t = make_torrent(
        [("a.bin", 3 * PIECE + 5000), ("e.txt", b""), ("sub/b.bin", 2 * PIECE), ("c", 777)],
        version=version,
        piece_length=PIECE,
        seed=5,
    )
    with TorrentStorage(t.meta, tmp_path, direct_writes=True) as st:
        st.open()
        write_pieces(t, st, aligned=aligned)
        assert st.read(0, t.meta.total_length) == t.space
        st.sync()
    for entry, data in zip(t.meta.data_files, t.contents, strict=True):
        assert file_path(t.meta, tmp_path, entry).read_bytes() == data


def test_aligned_pieces_take_the_direct_descriptor(tmp_path: Path) -> None:
    need(supports_direct(tmp_path), "the temp folder's file system refuses O_DIRECT")
    t = make_torrent([("x.bin", 5 * PIECE + 1234)], piece_length=PIECE, single_file=True)
    with TorrentStorage(t.meta, tmp_path, direct_writes=True) as st:
        st.open()
        write_pieces(t, st, aligned=True)
        assert direct_used(st)
        assert st.read(0, t.meta.total_length) == t.space
    assert file_path(t.meta, tmp_path, t.meta.data_files[0]).read_bytes() == t.contents[0]
    # Off by default: the storage alone never opens one.
    with TorrentStorage(t.meta, tmp_path) as st:
        st.open()
        write_pieces(t, st, aligned=True)
        assert not direct_used(st)


def test_a_file_system_without_o_direct_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_direct(path: object, flags: int, *args: object, **kw: object) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "O_DIRECT not supported here")  # as older tmpfs
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(files_mod.os, "open", refuse_direct)
    t = make_torrent([("y.bin", 4 * PIECE + 99)], piece_length=PIECE, single_file=True)
    with TorrentStorage(t.meta, tmp_path, direct_writes=True) as st:
        st.open()
        write_pieces(t, st, aligned=True)
        assert all(h.direct == files_mod._UNSUPPORTED for h in st._handles.values())
        assert st.read(0, t.meta.total_length) == t.space


def test_disk_full_on_the_direct_path_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_torrent([("z.bin", 2 * PIECE)], piece_length=PIECE, single_file=True)
    st = TorrentStorage(t.meta, tmp_path, direct_writes=True)
    st.open()

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_mod.os, "pwrite", full)
    buf = piece_buffer(PIECE)
    with pytest.raises(StorageError, match="disk full"):
        st.write(0, memoryview(buf))
    st.close()


def test_piece_buffers_are_page_aligned_and_zeroed() -> None:
    import ctypes

    for size in (1, 5000, PIECE, 3 * PIECE + 7):
        buf = piece_buffer(size)
        assert len(buf) == size and buf[:] == bytes(size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert address % DIRECT_ALIGN == 0
        buf.close()
