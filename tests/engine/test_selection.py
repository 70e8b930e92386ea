"""--files specs -> file priorities -> piece priorities (pure)."""

from __future__ import annotations

import pytest

from swarmhub.engine.selection import (
    SelectionError,
    file_priorities,
    piece_priorities,
    wanted_files,
)
from swarmhub.metainfo.model import FileEntry, Metainfo


def make_meta(files: list[tuple[str, int]], piece_length: int = 100) -> Metainfo:
    entries, pos = [], 0
    for path, length in files:
        entries.append(FileEntry(tuple(path.split("/")), length, pos))
        pos += length
    n = -(-pos // piece_length)
    return Metainfo(name="t", piece_length=piece_length, files=tuple(entries),
                    total_length=pos, info_bytes=b"d4:name1:te", info_hash_v1=b"\1" * 20,
                    info_hash_v2=None, pieces_v1=b"\0" * 20 * n)


META = make_meta([("docs/a.txt", 150), ("docs/b/c.txt", 10), ("video.mkv", 240),
                  ("empty", 0), ("z.nfo", 100)])


def test_by_index_and_by_glob_and_by_folder() -> None:
    assert wanted_files(META, ["2"]) == {2}
    assert wanted_files(META, ["docs/*"]) == {0, 1}  # * crosses / as in fnmatch
    assert wanted_files(META, ["docs/b"]) == {1}  # a folder selects what is below it
    assert wanted_files(META, ["*.nfo", "0"]) == {0, 4}


@pytest.mark.parametrize("spec", ["9", "nothing*", "doc"])
def test_a_spec_that_selects_nothing_is_an_error(spec: str) -> None:
    with pytest.raises(SelectionError):
        wanted_files(META, [spec])


def test_no_spec_means_every_file() -> None:
    assert file_priorities(META, []) == [1, 1, 1, 1, 1]
    assert file_priorities(META, ["video*"]) == [0, 0, 1, 0, 0]


def test_pieces_take_the_highest_priority_of_the_files_they_touch() -> None:
    # bytes: a 0-150, c 150-160, video 160-400, empty, nfo 400-500; pieces of 100
    assert piece_priorities(META, [0, 0, 1, 0, 0]) == [0, 1, 1, 1, 0]
    assert piece_priorities(META, [1, 0, 0, 0, 0]) == [1, 1, 0, 0, 0]
    assert piece_priorities(META, [0, 5, 1, 1, 0]) == [0, 5, 1, 1, 0]
    assert piece_priorities(META, [0, 0, 0, 1, 0]) == [0, 0, 0, 0, 0]  # empty file: no piece


def test_the_priority_count_must_match() -> None:
    with pytest.raises(SelectionError):
        piece_priorities(META, [1, 1])


@pytest.mark.parametrize("bad", [-1, 8])
def test_file_priorities_are_0_to_7(bad: int) -> None:
    with pytest.raises(SelectionError):
        piece_priorities(META, [1, 1, bad, 1, 1])
