from __future__ import annotations

import copy
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import BencodeError, MetainfoError
from swarmhub.metainfo import (
    FileEntry,
    TorrentVersion,
    create_torrent,
    load_torrent,
    read_torrent,
    torrent_bytes,
)

PL = 16384


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def v1_single(**extra: Any) -> dict[Any, Any]:
    data = rnd(40000, 1)
    pieces = b"".join(hashlib.sha1(data[i : i + PL]).digest() for i in range(0, len(data), PL))
    return {
        b"info": {
            b"name": b"file.bin",
            b"piece length": PL,
            b"length": len(data),
            b"pieces": pieces,
        },
        **extra,
    }


def v1_multi(paths: list[list[bytes]] | None = None, name: bytes = b"dir") -> dict[bytes, Any]:
    paths = paths or [[b"a"], [b"sub", b"b"]]
    files = [{b"length": 10000, b"path": p} for p in paths]
    n = -(-10000 * len(paths) // PL)
    return {
        b"info": {b"name": name, b"piece length": PL, b"files": files, b"pieces": bytes(20 * n)}
    }


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real torrents (bytes) of each kind, made by our creator from a small folder."""
    root = tmp_path_factory.mktemp("p")
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a").write_bytes(rnd(40000, 2))
    (folder / "sub" / "big").write_bytes(rnd(5 * PL + 7, 3))
    (folder / "empty").write_bytes(b"")
    (root / "single").write_bytes(rnd(3 * PL + 1, 4))
    out = {}
    for version in TorrentVersion:
        for label, path in (("multi", folder), ("single", root / "single")):
            meta = create_torrent(
                path, version=version, piece_length=PL, trackers=[["http://t/a"]], comment="c"
            )
            out[f"{version.value}-{label}"] = torrent_bytes(meta)
    return out


def test_v1_single_file_fields() -> None:
    raw = v1_single(
        announce=b"http://tracker/announce",
        **{
            "comment": b"hi \xff",  # legacy encodings are shown, not refused
            "created by": b"mktorrent",
            "creation date": 1700000000,
            "url-list": b"http://seed/file.bin",
        },
    )
    raw = {k if isinstance(k, bytes) else k.encode(): v for k, v in raw.items()}
    meta = load_torrent(bencode(raw))
    info = bencode(raw[b"info"])
    assert meta.info_bytes == info
    assert meta.info_hash_v1 == hashlib.sha1(info).digest()
    assert meta.info_hash_v2 is None and meta.version is TorrentVersion.V1
    assert meta.files == (FileEntry(("file.bin",), 40000, 0),)
    assert meta.single_file and meta.name == "file.bin"
    assert meta.num_pieces == 3 and meta.piece_size(2) == 40000 - 2 * PL
    assert meta.trackers == (("http://tracker/announce",),)
    assert meta.url_list == ("http://seed/file.bin",)
    assert meta.comment == "hi \ufffd" and meta.created_by == "mktorrent"
    assert meta.creation_date == 1700000000 and not meta.private


def test_announce_list_wins_over_announce_and_tiers_are_kept() -> None:
    raw = v1_single()
    raw[b"announce"] = b"http://ignored/"
    raw[b"announce-list"] = [[b"http://a/", b"udp://b:1"], [], [b""], [b"http://c/"]]
    raw[b"url-list"] = [b"http://s1/", b"", b"http://s2/"]
    raw[b"info"][b"private"] = 1
    meta = load_torrent(bencode(raw))
    assert meta.trackers == (("http://a/", "udp://b:1"), ("http://c/",))
    assert meta.url_list == ("http://s1/", "http://s2/")
    assert meta.private


def test_v1_multi_file_offsets() -> None:
    meta = load_torrent(bencode(v1_multi()))
    assert [(f.path, f.offset) for f in meta.files] == [(("a",), 0), (("sub", "b"), 10000)]
    assert not meta.single_file and meta.total_length == 20000


def test_v1_pad_files_are_marked() -> None:
    raw = v1_multi()
    files = raw[b"info"][b"files"]
    files.insert(1, {b"attr": b"p", b"length": 6384, b"path": [b".pad", b"6384"]})
    raw[b"info"][b"pieces"] = bytes(40)
    meta = load_torrent(bencode(raw))
    assert [f.pad for f in meta.files] == [False, True, False]
    assert meta.files[2].offset == PL and meta.data_length == 20000


@pytest.mark.parametrize("kind", ["v2-multi", "v2-single", "hybrid-multi", "hybrid-single"])
def test_round_trip_of_real_torrents(made: dict[str, bytes], kind: str) -> None:
    data = made[kind]
    meta = load_torrent(data)
    assert torrent_bytes(meta) == data
    assert meta.info_hash_v2 == hashlib.sha256(meta.info_bytes).digest()
    assert meta.trackers == (("http://t/a",),) and meta.comment == "c"


def test_v2_only_layout_has_implied_pads(made: dict[str, bytes]) -> None:
    meta = load_torrent(made["v2-multi"])
    hybrid = load_torrent(made["hybrid-multi"])
    assert meta.files == hybrid.files
    assert [("/".join(f.path), f.offset, f.pad) for f in meta.files] == [
        ("a", 0, False),
        (".pad/9152", 40000, True),
        ("empty", 3 * PL, False),
        ("sub/big", 3 * PL, False),
        (f".pad/{PL - 7}", 8 * PL + 7, True),
    ]
    big = meta.files[3]
    assert big.pieces_root is not None and len(meta.piece_layers[big.pieces_root]) == 6 * 32
    assert meta.files[2].pieces_root is None  # empty file: no root
    assert meta.num_pieces == 9 and meta.total_length == 9 * PL


def _edit(data: bytes, fn: Any) -> bytes:
    raw = bdecode(data)
    fn(raw)
    encoded: bytes = bencode(raw)
    return encoded


def _first_layer_key(raw: dict[bytes, Any]) -> bytes:
    key: bytes = next(iter(raw[b"piece layers"]))
    return key


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("v1-multi", lambda r: r[b"info"].__setitem__(b"piece length", 3 * PL), "power of two"),
        ("v1-multi", lambda r: r[b"info"].__setitem__(b"piece length", 0), "piece length"),
        ("v1-multi", lambda r: r[b"info"].__setitem__(b"piece length", -PL), "piece length"),
        (
            "v1-multi",
            lambda r: r[b"info"].__setitem__(b"pieces", r[b"info"][b"pieces"][:-1]),
            "'pieces'",
        ),
        (
            "v1-multi",
            lambda r: r[b"info"].__setitem__(b"pieces", r[b"info"][b"pieces"] + bytes(20)),
            "'pieces'",
        ),
        ("v1-multi", lambda r: r[b"info"].pop(b"pieces"), "neither"),
        ("v1-multi", lambda r: r[b"info"].pop(b"files"), "neither 'length'"),
        ("v1-multi", lambda r: r[b"info"].__setitem__(b"files", []), "empty"),
        ("v1-multi", lambda r: r.pop(b"info"), "'info'"),
        ("v1-multi", lambda r: r[b"info"][b"files"][0].__setitem__(b"length", -1), "length"),
        ("v1-multi", lambda r: r[b"info"][b"files"][0].__setitem__(b"path", b"a"), "path"),
        ("v1-multi", lambda r: r.__setitem__(b"announce-list", b"x"), "announce-list"),
        ("v1-multi", lambda r: r.__setitem__(b"announce", b"\xff"), "UTF-8"),
        ("v2-multi", lambda r: r[b"info"].__setitem__(b"meta version", 3), "meta version"),
        ("v2-multi", lambda r: r[b"info"].__setitem__(b"piece length", 8192), "16 KiB"),
        ("v2-multi", lambda r: r.pop(b"piece layers"), "missing"),
        (
            "v2-multi",
            lambda r: r[b"piece layers"].__setitem__(_first_layer_key(r), bytes(32)),
            "expected",
        ),
        (
            "v2-multi",
            lambda r: r[b"piece layers"].__setitem__(_first_layer_key(r), bytes(6 * 32)),
            "does not hash",
        ),
        (
            "v2-multi",
            lambda r: r[b"info"][b"file tree"][b"a"][b""].__setitem__(b"pieces root", b"x"),
            "32 bytes",
        ),
        (
            "v2-multi",
            lambda r: r[b"info"][b"file tree"][b"a"][b""].pop(b"pieces root"),
            "pieces root",
        ),
        ("v2-multi", lambda r: r[b"info"][b"file tree"][b"a"].__setitem__(b"x", {}), "both a file"),
        ("v2-multi", lambda r: r[b"info"][b"file tree"].__setitem__(b"dir", {}), "empty directory"),
        ("v2-multi", lambda r: r[b"info"].__setitem__(b"file tree", {}), "empty directory"),
        (
            "hybrid-multi",
            lambda r: r[b"info"][b"file tree"][b"a"][b""].__setitem__(b"length", 39999),
            "does not match",
        ),
        ("hybrid-multi", lambda r: r[b"info"][b"files"].pop(1), "piece boundary"),
        ("hybrid-multi", lambda r: r[b"info"][b"files"].pop(0), "v1 lists"),
        ("hybrid-multi", lambda r: r[b"info"][b"file tree"].pop(b"empty"), "v1 lists"),
        (
            "hybrid-single",
            lambda r: r[b"info"][b"file tree"].__setitem__(
                b"other", r[b"info"][b"file tree"].pop(b"single")
            ),
            "does not match",
        ),
    ],
)
def test_invalid_torrents_raise_metainfo_error(
    made: dict[str, bytes], kind: str, edit: Any, message: str
) -> None:
    data = _edit(made[kind], edit)
    with pytest.raises(MetainfoError, match=message):
        load_torrent(data)


def test_zero_length_torrent_is_refused() -> None:
    raw = v1_multi()
    for f in raw[b"info"][b"files"]:
        f[b"length"] = 0
    raw[b"info"][b"pieces"] = b""
    with pytest.raises(MetainfoError, match="no data"):
        load_torrent(bencode(raw))


@pytest.mark.parametrize(
    "paths",
    [
        [[b"a"], [b"a"]],
        [[b"a"], [b"a", b"b"]],
        [[b"x", b"y"], [b"x"]],
    ],
)
def test_colliding_paths_are_refused(paths: list[list[bytes]]) -> None:
    with pytest.raises(MetainfoError, match=r"twice|both a file and a directory"):
        load_torrent(bencode(v1_multi(paths)))


HOSTILE = [
    ("name", b".."),
    ("name", b"/etc/passwd"),
    ("name", b"a\x00b"),
    ("name", b"CON.txt"),
    ("path", [b"..", b"x"]),
    ("path", [b"/etc/passwd"]),
    ("path", [b"", b"etc", b"passwd"]),
    ("path", [b"a\x00b"]),
    ("path", [b"CON.txt"]),
    ("path", [b"ok", b"..", b"..", b"x"]),
    ("path", [b"C:", b"Windows"]),
    ("path", []),
]


@pytest.mark.parametrize(("where", "value"), HOSTILE)
def test_path_traversal_is_refused_before_anything_is_written(
    tmp_path: Path, where: str, value: Any
) -> None:
    raw = v1_multi()
    if where == "name":
        raw[b"info"][b"name"] = value
    else:
        raw[b"info"][b"files"][1][b"path"] = value
    torrent = tmp_path / "evil.torrent"
    torrent.write_bytes(bencode(raw))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(MetainfoError, match=r"unsafe path|empty"):
        read_torrent(torrent)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("key", [b"..", b"CON.txt", b"a\x00b", b"a/b"])
def test_hostile_v2_file_tree_keys_are_refused(made: dict[str, bytes], key: bytes) -> None:
    def edit(r: dict[bytes, Any]) -> None:
        tree = r[b"info"][b"file tree"]
        tree[key] = tree.pop(b"a")

    with pytest.raises(MetainfoError, match="unsafe path"):
        load_torrent(_edit(made["v2-multi"], edit))


def test_read_torrent_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MetainfoError, match=r"missing\.torrent"):
        read_torrent(tmp_path / "missing.torrent")
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"not bencode")
    with pytest.raises(MetainfoError, match=r"bad\.torrent"):
        read_torrent(bad)
    good = tmp_path / "good.torrent"
    good.write_bytes(bencode(v1_single()))
    assert read_torrent(good).name == "file.bin"
    assert read_torrent(str(good)).name == "file.bin"


def test_malformed_bencode_is_a_bencode_error() -> None:
    with pytest.raises(BencodeError):
        load_torrent(b"d4:infod")
    with pytest.raises(MetainfoError, match="dictionary"):
        load_torrent(b"i5e")


# --- fuzzing: any mutation of a real torrent parses or raises BencodeError/MetainfoError ---

KINDS = ["v1-multi", "v1-single", "v2-multi", "v2-single", "hybrid-multi", "hybrid-single"]
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _load_or_expected_error(data: bytes) -> None:
    try:
        meta = load_torrent(data)
    except (BencodeError, MetainfoError):
        return
    # Anything accepted is internally consistent.
    assert meta.total_length == sum(f.length for f in meta.files)
    assert all(f.offset + f.length <= meta.total_length for f in meta.files)
    assert meta.data_length > 0


@FUZZ
@given(st.sampled_from(KINDS), st.data())
def test_fuzz_byte_mutations(made: dict[str, bytes], kind: str, data: st.DataObject) -> None:
    buf = bytearray(made[kind])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(buf)))
        if op == "flip" and pos < len(buf):
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif pos < len(buf):
            del buf[pos : pos + data.draw(st.integers(1, 8))]
    _load_or_expected_error(bytes(buf))


bvalues = st.recursive(
    st.integers(-(2**70), 2**70)
    | st.binary(max_size=40)
    | st.sampled_from([b"", b"..", b"p", b"x" * 32, b"\xff", 0, 1, 2, PL]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.binary(max_size=6), c, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(st.sampled_from(KINDS), st.data())
def test_fuzz_structural_mutations(made: dict[str, bytes], kind: str, data: st.DataObject) -> None:
    """Replace, delete or add values anywhere in the decoded tree, then re-encode."""
    raw = copy.deepcopy(bdecode(made[kind]))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(raw)
        path = data.draw(st.sampled_from(paths[1:]))
        parent = raw
        for step in path[:-1]:
            parent = parent[step]
        op = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = data.draw(bvalues)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.binary(max_size=12))] = data.draw(bvalues)
        else:
            parent.append(data.draw(bvalues))
    try:
        encoded = bencode(raw)
    except BencodeError:
        return
    _load_or_expected_error(encoded)


def test_package_reexports_every_public_name() -> None:
    import importlib

    import swarmhub.metainfo as pkg

    for sub in ("model", "merkle", "parse", "create", "magnet", "paths"):
        module = importlib.import_module(f"swarmhub.metainfo.{sub}")
        for name in module.__all__:
            assert name in pkg.__all__, f"{sub}.{name} is not re-exported"
            assert getattr(pkg, name) is getattr(module, name)
    assert sorted(pkg.__all__) == sorted(set(pkg.__all__))
