from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import PIECE, Torrent, file_path, make_torrent
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.bencode import bencode
from swarmhub.errors import StorageError
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.storage import (
    ResumeData,
    TorrentStorage,
    load_resume,
    make_resume,
    pack_bits,
    resume_path,
    save_resume,
    trusted_pieces,
    unpack_bits,
)
from swarmhub.storage import resume as resume_mod


def test_pack_bits_uses_bep3_order() -> None:
    assert pack_bits(bytearray([1, 0, 0, 0, 0, 0, 0, 1, 1])) == b"\x81\x80"
    assert pack_bits(bytearray([0, 1, 1])) == b"\x60"
    assert pack_bits(bytearray([0, 7, 255])) == b"\x60"  # nonzero counts as set
    assert pack_bits(bytearray()) == b""
    assert unpack_bits(b"\x81\x80", 9) == bytearray([1, 0, 0, 0, 0, 0, 0, 1, 1])
    assert unpack_bits(b"\x00\x01", 16)[-1] == 1
    with pytest.raises(ValueError):
        unpack_bits(b"\xff", 9)


@given(st.lists(st.integers(0, 1), max_size=2000))
def test_pack_unpack_round_trip(bits: list[int]) -> None:
    packed = pack_bits(bytearray(bits))
    assert len(packed) == (len(bits) + 7) // 8
    assert unpack_bits(packed, len(bits)) == bytearray(bits)
    expected = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        expected[i // 8] |= bit << (7 - i % 8)
    assert packed == expected


def sample(**extra: object) -> ResumeData:
    return ResumeData(
        info_hash=b"\x11" * 20,
        have=b"\xf0\x01",
        file_sizes=(10, -1, 0),
        file_mtimes=(1_700_000_000_123_456_789, -1, 5),
        extra=dict(extra),
    )


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = resume_path(tmp_path / "state", b"\xab" * 20)
    assert path == tmp_path / "state" / ("ab" * 20 + ".resume")
    data = sample(uploaded=123, note=b"x", peers=[b"a", b"b"])
    save_resume(path, data)
    assert load_resume(path) == data
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_missing_resume_is_none(tmp_path: Path) -> None:
    assert load_resume(tmp_path / "nope.resume") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"d7:version",  # cut short, as a torn write would leave it
        bencode({b"version": 99}),
        bencode([1, 2]),
        bencode({b"version": 1, b"info-hash": b"x" * 20, b"have": b""}),
        bencode(
            {
                b"version": 1,
                b"info-hash": b"x" * 20,
                b"have": b"",
                b"file-sizes": [b"not an int"],
                b"file-mtimes": [1],
            }
        ),
        bencode(
            {
                b"version": 1,
                b"info-hash": b"short",
                b"have": b"",
                b"file-sizes": [],
                b"file-mtimes": [],
            }
        ),
    ],
)
def test_corrupt_resume_is_none_and_logged(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "x.resume"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="swarmhub.storage.resume"):
        assert load_resume(path) is None
    assert "corrupt resume data" in caplog.text


def test_failed_replace_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.resume"
    old = sample(generation=1)
    save_resume(path, old)

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(resume_mod.os, "replace", crash)
    with pytest.raises(StorageError, match="cannot write resume data"):
        save_resume(path, sample(generation=2))
    monkeypatch.undo()
    assert load_resume(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["t.resume"]


def test_interrupt_mid_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.resume"
    old = sample(generation=1)
    save_resume(path, old)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(resume_mod.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_resume(path, sample(generation=2))
    monkeypatch.undo()
    assert load_resume(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["t.resume"]


def test_save_fsyncs_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kinds: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        kinds.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(resume_mod.os, "fsync", spy)
    save_resume(tmp_path / "t.resume", sample())
    assert kinds == [False, True]


def test_before_replace_runs_once_the_record_is_durable_and_can_stop_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.resume"
    old = sample(generation=1)
    save_resume(path, old)
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync")
        real(fd)

    def data_not_durable() -> None:
        calls.append("before_replace")
        raise StorageError("cannot fsync payload: Input/output error")

    monkeypatch.setattr(resume_mod.os, "fsync", spy)
    with pytest.raises(StorageError, match="cannot fsync payload"):
        save_resume(path, sample(generation=2), before_replace=data_not_durable)
    assert calls == ["fsync", "before_replace"]
    assert load_resume(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["t.resume"]
    calls.clear()
    save_resume(path, sample(generation=2), before_replace=lambda: calls.append("ok"),
                sync_folder=False)
    assert calls == ["fsync", "ok"], "no folder fsync"
    assert load_resume(path) == sample(generation=2)


FILES = [("a", 3 * PIECE), ("b", 100), ("c", PIECE + 7), ("d", 2 * PIECE)]


def downloaded(tmp_path: Path) -> tuple[Torrent, TorrentStorage, ResumeData]:
    t = make_torrent(FILES, version=TorrentVersion.V1, pads=False)
    storage = TorrentStorage(t.meta, tmp_path)
    storage.open()
    storage.write(0, t.space)
    data = make_resume(t.meta, storage, b"\1" * t.meta.num_pieces, {"uploaded": 5})
    path = resume_path(tmp_path / "state", t.meta.info_hash)
    save_resume(path, data)
    loaded = load_resume(path)
    assert loaded == data
    return t, storage, loaded


def pieces_of(t: Torrent, index: int) -> set[int]:
    entry = t.meta.data_files[index]
    pl = t.meta.piece_length
    return set(range(entry.offset // pl, (entry.end - 1) // pl + 1))


def test_unchanged_files_keep_all_pieces(tmp_path: Path) -> None:
    t, storage, data = downloaded(tmp_path)
    assert trusted_pieces(data, t.meta, storage) == b"\1" * t.meta.num_pieces
    storage.close()


def test_changed_mtime_invalidates_only_the_pieces_of_that_file(tmp_path: Path) -> None:
    t, storage, data = downloaded(tmp_path)
    c = file_path(t.meta, tmp_path, t.meta.data_files[2])
    st_c = c.stat()
    os.utime(c, ns=(st_c.st_atime_ns, st_c.st_mtime_ns + 1))
    trusted = trusted_pieces(data, t.meta, storage)
    lost = {i for i in range(t.meta.num_pieces) if not trusted[i]}
    assert lost == pieces_of(t, 2)
    # "c" shares its first piece with "a"/"b" and its last with "d": those go too,
    # but "a"'s first pieces and "d"'s last piece stay trusted.
    assert trusted[0] and trusted[t.meta.num_pieces - 1]
    storage.close()


def test_resized_or_missing_files_invalidate_their_pieces(tmp_path: Path) -> None:
    t, storage, data = downloaded(tmp_path)
    storage.close()
    a = file_path(t.meta, tmp_path, t.meta.data_files[0])
    with open(a, "r+b") as fh:
        fh.truncate(PIECE)
    file_path(t.meta, tmp_path, t.meta.data_files[3]).unlink()
    trusted = trusted_pieces(data, t.meta, storage)
    lost = {i for i in range(t.meta.num_pieces) if not trusted[i]}
    assert lost == pieces_of(t, 0) | pieces_of(t, 3)


def test_resume_of_another_torrent_trusts_nothing(tmp_path: Path) -> None:
    t, storage, data = downloaded(tmp_path)
    other = ResumeData(b"\x00" * 20, data.have, data.file_sizes, data.file_mtimes)
    assert trusted_pieces(other, t.meta, storage) == bytes(t.meta.num_pieces)
    fewer = ResumeData(data.info_hash, data.have, data.file_sizes[:-1], data.file_mtimes[:-1])
    assert trusted_pieces(fewer, t.meta, storage) == bytes(t.meta.num_pieces)
    storage.close()


def test_partial_have_is_kept_as_recorded(tmp_path: Path) -> None:
    t = make_torrent(FILES, version=TorrentVersion.HYBRID)
    storage = TorrentStorage(t.meta, tmp_path)
    storage.open()
    have = bytearray(t.meta.num_pieces)
    have[1] = have[4] = 1
    data = make_resume(t.meta, storage, have)
    assert trusted_pieces(data, t.meta, storage) == have
    with pytest.raises(ValueError):
        make_resume(t.meta, storage, have + b"\1")
    storage.close()
