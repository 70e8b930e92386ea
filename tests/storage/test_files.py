from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import PIECE, Torrent, file_path, make_torrent

from conftest import need
from swarmhub.errors import StorageError
from swarmhub.metainfo.model import BLOCK_SIZE, FileEntry, TorrentVersion
from swarmhub.storage import TorrentStorage
from swarmhub.storage import files as files_mod

ALL_LAYOUTS = [
    pytest.param(TorrentVersion.V1, False, id="v1-nopads"),
    pytest.param(TorrentVersion.V1, True, id="v1-pads"),
    pytest.param(TorrentVersion.V2, False, id="v2-implied-pads"),
    pytest.param(TorrentVersion.V2, True, id="v2-explicit-pads"),
    pytest.param(TorrentVersion.HYBRID, True, id="hybrid"),
]

MIXED: list[tuple[str, bytes | int]] = [
    ("a.bin", 10_000),
    ("empty.txt", b""),
    ("sub/b.bin", 3 * PIECE + 123),
    ("sub/deeper/c.bin", PIECE),
    ("d.bin", 1),
    ("e.bin", 2 * PIECE - 5),
]


def blocks(t: Torrent) -> Iterator[tuple[int, int, int]]:
    """(piece, begin, length) of every block of the torrent."""
    for index in range(t.meta.num_pieces):
        size = t.meta.piece_size(index)
        for begin in range(0, size, BLOCK_SIZE):
            yield index, begin, min(BLOCK_SIZE, size - begin)


def write_all(t: Torrent, st: TorrentStorage, order: list[tuple[int, int, int]]) -> None:
    for index, begin, length in order:
        off = index * t.meta.piece_length + begin
        st.write_block(index, begin, t.space[off : off + length])


@pytest.mark.parametrize(("version", "pads"), ALL_LAYOUTS)
def test_round_trip_through_blocks_lands_in_files(
    tmp_path: Path, version: TorrentVersion, pads: bool
) -> None:
    t = make_torrent(MIXED, version=version, pads=pads)
    order = list(blocks(t))
    random.Random(1).shuffle(order)
    with TorrentStorage(t.meta, tmp_path) as st:
        st.open()
        write_all(t, st, order)
        for index in range(t.meta.num_pieces):
            start = index * t.meta.piece_length
            assert st.read_piece(index) == t.space[start : start + t.meta.piece_size(index)]
        assert st.read(0, t.meta.total_length) == t.space
    for entry, data in zip(t.meta.data_files, t.contents, strict=True):
        assert file_path(t.meta, tmp_path, entry).read_bytes() == data
    # Pads never reach the disk.
    on_disk = {p.relative_to(tmp_path / "t").as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {name for name, _ in MIXED}


def test_single_file_lives_at_save_path_name(tmp_path: Path) -> None:
    t = make_torrent([("movie.mkv", 2 * PIECE + 7)], name="movie.mkv", single_file=True)
    with TorrentStorage(t.meta, tmp_path) as st:
        st.open()
        st.write(0, t.space)
        assert st.file_path(t.meta.files[0]) == tmp_path / "movie.mkv"
        assert st.read_block(2, 0, 7) == t.space[-7:]
    assert (tmp_path / "movie.mkv").read_bytes() == t.space


def test_block_spanning_three_files(tmp_path: Path) -> None:
    t = make_torrent([("x", 100), ("y", 50), ("z", BLOCK_SIZE)], pads=False)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    mapping = st.files_for_range(90, 200)
    assert [(e.path, off, n) for e, off, n in mapping] == [
        (("x",), 90, 10),
        (("y",), 0, 50),
        (("z",), 0, 140),
    ]
    st.write_block(0, 0, t.space[:BLOCK_SIZE])
    assert st.read(90, 200) == t.space[90:290]
    assert (tmp_path / "t" / "y").read_bytes() == t.contents[1]
    st.close()


def test_pads_read_as_zeros_and_writes_to_them_are_dropped(tmp_path: Path) -> None:
    t = make_torrent([("a", 1000), ("b", 1000)], pads=True)
    pad = next(e for e in t.meta.files if e.pad)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    st.write(0, b"\xff" * t.meta.total_length)
    assert st.read(pad.offset, pad.length) == bytes(pad.length)
    assert (tmp_path / "t" / "a").read_bytes() == b"\xff" * 1000
    assert not (tmp_path / "t" / ".pad").exists()
    mapping = st.files_for_range(0, t.meta.total_length)
    assert [e.pad for e, _, _ in mapping] == [False, True, False]
    st.close()


def test_implied_v2_gaps_read_as_zeros(tmp_path: Path) -> None:
    t = make_torrent([("a", 1000), ("b", 1000)], version=TorrentVersion.V2, pads=False)
    assert not any(e.pad for e in t.meta.files)
    assert t.meta.files[1].offset == PIECE
    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    st.write(0, b"\x01" * t.meta.total_length)
    assert st.read(0, PIECE) == b"\x01" * 1000 + bytes(PIECE - 1000)
    assert [e.path for e, _, _ in st.files_for_range(0, t.meta.total_length)] == [("a",), ("b",)]
    st.close()


def test_open_creates_sparse_files_and_empty_files(tmp_path: Path) -> None:
    big = 64 * 1024 * 1024
    t = make_torrent([("big", b""), ("e", b"")], pads=False)
    # A 64 MiB entry described by its length only (no hashes needed to create files).
    meta = replace(
        t.meta,
        files=(FileEntry(("big",), big, 0), FileEntry(("e",), 0, big)),
        total_length=big,
    )
    st = TorrentStorage(meta, tmp_path)
    st.open()
    info = os.stat(tmp_path / "t" / "big")
    assert info.st_size == big
    assert info.st_blocks * 512 < big // 8  # sparse, not written out
    assert (tmp_path / "t" / "e").stat().st_size == 0
    assert st.sizes() == (big, 0)
    assert st.exists()
    st.close()


def test_open_extends_short_files_but_never_shrinks(tmp_path: Path) -> None:
    t = make_torrent([("a", 5000), ("b", 5000)], pads=False)
    root = tmp_path / "t"
    root.mkdir()
    (root / "a").write_bytes(b"x" * 100)
    (root / "b").write_bytes(b"y" * 9000)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    assert st.sizes() == (5000, 9000)
    assert st.read(0, 101) == b"x" * 100 + b"\0"
    st.close()


def test_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    t = make_torrent([("a", 100), ("b", 100)], pads=False)
    t.write_files(tmp_path)
    (tmp_path / "t" / "b").unlink()
    st = TorrentStorage(t.meta, tmp_path)
    assert st.read(0, 100) == t.contents[0]
    with pytest.raises(StorageError, match=r"missing file .*b"):
        st.read(50, 100)
    assert st.exists()  # "a" is still there
    assert st.sizes() == (100, -1)
    assert st.mtimes()[1] == -1


def test_short_file_read_is_a_storage_error(tmp_path: Path) -> None:
    t = make_torrent([("a", 1000)], pads=False)
    t.write_files(tmp_path)
    with open(tmp_path / "t" / "a", "r+b") as fh:
        fh.truncate(500)
    st = TorrentStorage(t.meta, tmp_path)
    with pytest.raises(StorageError, match="shorter than expected"):
        st.read(0, 1000)
    st.close()


def test_range_outside_the_torrent_is_refused(tmp_path: Path) -> None:
    t = make_torrent([("a", 1000)], pads=False)
    st = TorrentStorage(t.meta, tmp_path)
    for off, n in [(-1, 1), (999, 2), (0, -1)]:
        with pytest.raises(StorageError, match="outside the torrent"):
            st.read(off, n)
    with pytest.raises(StorageError, match="outside piece"):
        st.write_block(0, 990, b"x" * 20)


def test_refuses_a_symlinked_file(tmp_path: Path) -> None:
    t = make_torrent([("a", 100), ("b", 100)], pads=False)
    save = tmp_path / "save"
    (save / "t").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (save / "t" / "b").symlink_to(victim)
    st = TorrentStorage(t.meta, save)
    with pytest.raises(StorageError, match=r"resolves outside|symlink"):
        st.open()
    with pytest.raises(StorageError):
        st.write(100, b"z" * 100)
    assert victim.read_bytes() == b"precious"


def test_refuses_a_symlinked_file_even_inside_save_path(tmp_path: Path) -> None:
    t = make_torrent([("a", 100), ("b", 100)], pads=False)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "other").write_bytes(b"keep")
    (tmp_path / "t" / "b").symlink_to(tmp_path / "t" / "other")
    st = TorrentStorage(t.meta, tmp_path)
    with pytest.raises(StorageError, match="symlink"):
        st.open()
    with pytest.raises(StorageError, match="symlink"):
        st.read(100, 10)
    assert (tmp_path / "t" / "other").read_bytes() == b"keep"


def test_refuses_a_symlinked_folder_even_inside_save_path(tmp_path: Path) -> None:
    t = make_torrent([("sub/a", 100)], pads=False)
    (tmp_path / "t" / "real").mkdir(parents=True)
    (tmp_path / "t" / "sub").symlink_to(tmp_path / "t" / "real")
    st = TorrentStorage(t.meta, tmp_path)
    with pytest.raises(StorageError, match="symlink"):
        st.open()
    assert list((tmp_path / "t" / "real").iterdir()) == []


def test_unsafe_components_are_refused_as_a_last_line_of_defence(tmp_path: Path) -> None:
    t = make_torrent([("a/../../escape", 100)], pads=False)
    with pytest.raises(StorageError, match="unsafe path component"):
        TorrentStorage(t.meta, tmp_path)


def test_lru_bounds_open_descriptors(tmp_path: Path) -> None:
    t = make_torrent([(f"f{i}", 3000) for i in range(12)], pads=False)
    before = len(os.listdir("/proc/self/fd"))
    st = TorrentStorage(t.meta, tmp_path, max_open_files=3)
    st.open()
    st.write(0, t.space)
    assert len(os.listdir("/proc/self/fd")) - before <= 3
    assert st.read(0, t.meta.total_length) == t.space
    assert len(os.listdir("/proc/self/fd")) - before <= 3
    st.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    t = make_torrent([(f"f{i}", 20_000 + 777 * i) for i in range(9)], pads=False, seed=5)
    st = TorrentStorage(t.meta, tmp_path, max_open_files=2)  # force constant eviction
    st.open()
    order = list(blocks(t))
    random.Random(2).shuffle(order)
    errors: list[BaseException] = []
    written: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def writer(part: list[tuple[int, int, int]]) -> None:
        try:
            for index, begin, length in part:
                off = index * t.meta.piece_length + begin
                st.write_block(index, begin, memoryview(t.space)[off : off + length])
                with lock:
                    written.append((index, begin, length))
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(300):
                with lock:
                    if not written:
                        continue
                    index, begin, length = random.choice(written)
                off = index * t.meta.piece_length + begin
                assert st.read_block(index, begin, length) == t.space[off : off + length]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(order[i::6],)) for i in range(6)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    assert st.read(0, t.meta.total_length) == t.space
    st.close()


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_torrent([("a", 10_000), ("b", 10_000)], pads=False)
    real = os.pwrite
    calls = []

    def dribble(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        return real(fd, memoryview(data)[:999], offset)

    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    monkeypatch.setattr(files_mod.os, "pwrite", dribble)
    st.write(0, t.space)
    monkeypatch.undo()
    assert len(calls) >= 20
    assert st.read(0, t.meta.total_length) == t.space
    st.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_is_a_storage_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    t = make_torrent([("a", 100), ("b", 100)], pads=False)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files_mod.os, "pwrite", full)
    with pytest.raises(StorageError, match=r"disk full while writing .*[/\\]b"):
        st.write(150, b"z" * 10)
    st.close()


def test_other_os_errors_name_the_file_and_the_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_torrent([("a", 100)], pads=False)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()

    def broken(*args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(files_mod.os, "pwrite", broken)
    monkeypatch.setattr(files_mod.os, "pread", broken)
    with pytest.raises(StorageError, match=r"cannot write .*t[/\\]a: Input/output error"):
        st.write(0, b"z")
    with pytest.raises(StorageError, match=r"cannot read .*t[/\\]a"):
        st.read(0, 10)
    st.close()


def test_sync_fsyncs_every_written_file_even_after_eviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_torrent([("a", 100), ("b", 100), ("c", 100), ("d", 100)], pads=False)
    st = TorrentStorage(t.meta, tmp_path, max_open_files=1)
    st.open()
    st.write(0, t.space[:300])  # a, b, c written; only c's descriptor is still open
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(files_mod.os, "fsync", spy)
    st.sync()
    assert sorted(synced) == ["a", "b", "c"]
    synced.clear()
    st.sync()  # nothing written since
    assert synced == []
    st.close()


def _mount_tmpfs(where: Path, options: str) -> bool:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode == 0


def _umount(where: Path) -> None:
    proc = subprocess.run(["umount", str(where)], capture_output=True, timeout=20, check=False)
    if proc.returncode != 0:  # still busy: detach it so no mount outlives the test
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20, check=False)


def test_real_full_disk_keeps_earlier_data_readable(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    need(_mount_tmpfs(mnt, "size=1m"), "mount -t tmpfs failed (no CAP_SYS_ADMIN?)")
    with contextlib.ExitStack() as stack:
        stack.callback(_umount, mnt)
        t = make_torrent([("a", 700 * 1024), ("b", 700 * 1024)], pads=False, seed=9)
        st = TorrentStorage(t.meta, mnt)
        stack.callback(st.close)
        st.open()
        written = 0
        with pytest.raises(StorageError, match="disk full") as info:
            for index, begin, length in blocks(t):
                off = index * t.meta.piece_length + begin
                st.write_block(index, begin, t.space[off : off + length])
                written = off + length
        assert str(mnt) in str(info.value)
        assert 512 * 1024 < written <= 1024 * 1024
        assert st.read(0, written) == t.space[:written]


def test_read_only_data_is_served_and_writes_fail_clearly(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "remounting a tmpfs read-only needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    need(_mount_tmpfs(mnt, "size=4m"), "mount -t tmpfs failed (no CAP_SYS_ADMIN?)")
    with contextlib.ExitStack() as stack:
        stack.callback(_umount, mnt)
        t = make_torrent([("a", 5000), ("b", 5000)], pads=False)
        t.write_files(mnt)
        proc = subprocess.run(
            ["mount", "-o", "remount,ro", str(mnt)], capture_output=True, timeout=20, check=False
        )
        assert proc.returncode == 0, proc.stderr
        st = TorrentStorage(t.meta, mnt)
        stack.callback(st.close)
        st.open(create=False)
        assert st.read(0, t.meta.total_length) == t.space
        with pytest.raises(StorageError, match=r"cannot open .*Read-only file system"):
            st.write(0, b"x")


def test_read_cached_reads_only_what_waits_for_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop's read: through descriptors open already and from the page cache
    only (``RWF_NOWAIT``); anything else is the disk pool's (False)."""
    need(files_mod._NOWAIT[0] != 0, "no RWF_NOWAIT on this kernel or file system")
    t = make_torrent(MIXED, pads=True)
    t.write_files(tmp_path)
    st = TorrentStorage(t.meta, tmp_path)
    st.open(create=False)
    try:
        total = t.meta.total_length
        buf = bytearray(total)
        assert not st.read_cached(0, buf)  # no file open yet: an open may wait
        assert st.read(0, total) == t.space  # the pool's read opens them
        buf = bytearray(total)
        assert st.read_cached(0, buf) and bytes(buf) == t.space  # pads and gaps as zeros
        # Pages not in the page cache (EAGAIN; a DONTNEED is only advice): the pool's.
        flags: list[int] = []

        def not_cached(fd: int, bufs: list[memoryview], offset: int, flag: int = 0) -> int:
            flags.append(flag)
            raise BlockingIOError(errno.EAGAIN, "not cached")

        monkeypatch.setattr(files_mod.os, "preadv", not_cached)
        assert not st.read_cached(0, bytearray(PIECE))
        assert flags == [files_mod._NOWAIT[0]] and files_mod._NOWAIT[0]  # asked again later
    finally:
        st.close()
