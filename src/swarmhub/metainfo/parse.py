"""Reading and writing .torrent files: v1 (BEP 3), v2 (BEP 52) and hybrid.

Everything a torrent file can get wrong surfaces as :class:`MetainfoError` (or
:class:`BencodeError` for bytes that are not bencode at all), never as a stray
``KeyError``/``TypeError``: a torrent is untrusted input, fuzzed in the tests.

The info hashes are taken over ``bencode(bdecode(info))``; our bencode is strict and
canonical, so these are exactly the bytes of the original file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from swarmhub._records import value_methods
from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import BencodeError, MetainfoError
from swarmhub.metainfo.merkle import root_from_layer
from swarmhub.metainfo.model import BLOCK_SIZE, FileEntry, Metainfo
from swarmhub.metainfo.paths import safe_components

__all__ = ["load_torrent", "pad_entry", "read_torrent", "torrent_bytes"]

#: Refuse absurd torrents early (libtorrent's default limit on file count is similar).
MAX_FILES = 1_000_000
MAX_PIECE_LENGTH = 1 << 30
#: 2**60 bytes: far beyond any real torrent, small enough for every file offset API.
MAX_TOTAL_LENGTH = 1 << 60


def pad_entry(length: int, offset: int) -> FileEntry:
    """A BEP 47 pad file, named the way libtorrent names them."""
    return FileEntry(path=(".pad", str(length)), length=length, offset=offset, pad=True, attr="p")


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class _TreeFile:
    path: tuple[str, ...]
    length: int
    root: bytes | None
    attr: str


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise MetainfoError(f"{what} must be an integer >= {minimum}, got {value!r:.60}")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise MetainfoError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _text(value: Any, what: str) -> str:
    try:
        return _bytes(value, what).decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"{what} is not valid UTF-8: {value!r:.80}") from None


def _dict(value: Any, what: str) -> dict[bytes, Any]:
    if not isinstance(value, dict):
        raise MetainfoError(f"{what} must be a dictionary, got {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MetainfoError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _attr(entry: dict[bytes, Any], what: str) -> str:
    raw = entry.get(b"attr", b"")
    # BEP 47: unknown letters are ignored; only ASCII letters carry meaning.
    return _bytes(raw, f"{what} attr").decode("ascii", "ignore")


def _walk_tree(node: dict[bytes, Any], prefix: tuple[bytes, ...]) -> Iterator[_TreeFile]:
    """Files of a BEP 52 ``file tree`` in tree order (= sorted by path bytes)."""
    if len(prefix) > 256:
        raise MetainfoError("file tree is nested too deeply")
    if not node:
        raise MetainfoError(f"file tree: empty directory at {list(prefix)!r:.200}")
    for key, child in node.items():
        if key == b"":
            raise MetainfoError(
                f"file tree: a directory entry at {list(prefix)!r:.200} has an empty name"
            )
        path = (*prefix, key)
        child = _dict(child, "file tree entry")
        if b"" not in child:
            yield from _walk_tree(child, path)
            continue
        parts = safe_components(path, what="file tree")
        what = f"file {'/'.join(parts)!r}"
        if len(child) != 1:
            raise MetainfoError(f"{what} is both a file and a directory")
        leaf = _dict(child[b""], what)
        length = _int(leaf.get(b"length"), f"{what} length")
        root = None
        if length > 0:
            root = _bytes(leaf.get(b"pieces root"), f"{what} pieces root")
            if len(root) != 32:
                raise MetainfoError(f"{what}: pieces root must be 32 bytes, got {len(root)}")
        yield _TreeFile(parts, length, root, _attr(leaf, what))


def _v1_files(info: dict[bytes, Any], name: str) -> tuple[list[FileEntry], bool]:
    """The v1 file list (pads included) in piece-space order, and the single-file flag."""
    if b"files" not in info:
        if b"length" not in info:
            raise MetainfoError("info has neither 'length' nor 'files'")
        length = _int(info[b"length"], "length")
        return [FileEntry((name,), length, 0, attr=_attr(info, "info"))], True
    entries = _list(info[b"files"], "files")
    if not entries:
        raise MetainfoError("'files' is empty")
    if len(entries) > MAX_FILES:
        raise MetainfoError(f"too many files ({len(entries)}; the limit is {MAX_FILES})")
    files: list[FileEntry] = []
    offset = 0
    for index, raw in enumerate(entries):
        what = f"file {index}"
        entry = _dict(raw, what)
        length = _int(entry.get(b"length"), f"{what} length")
        attr = _attr(entry, what)
        path = safe_components(_list(entry.get(b"path"), f"{what} path"), what=what)
        files.append(FileEntry(path, length, offset, pad="p" in attr, attr=attr))
        offset += length
    return files, False


def _check_unique(files: list[FileEntry]) -> None:
    """Refuse two files on the same path, or a file that is also another's directory."""
    seen: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for f in files:
        if f.pad:
            continue
        if f.path in seen or f.path in dirs:
            raise MetainfoError(f"file path {'/'.join(f.path)!r} appears twice")
        seen.add(f.path)
        for i in range(1, len(f.path)):
            dirs.add(f.path[:i])
    clash = seen & dirs
    if clash:
        raise MetainfoError(f"{'/'.join(min(clash))!r} is both a file and a directory")


def _v2_layout(tree: list[_TreeFile], piece_length: int) -> list[FileEntry]:
    """Piece space of a v2-only torrent: every file starts on a piece boundary.

    The implied pads are materialised as pad entries, after every file that does not end
    on a boundary, so that the layout equals that of the hybrid torrent libtorrent (and
    :mod:`swarmhub.metainfo.create`) would make from the same files.
    """
    files: list[FileEntry] = []
    offset = 0
    for tf in tree:
        files.append(FileEntry(tf.path, tf.length, offset, pieces_root=tf.root, attr=tf.attr))
        offset += tf.length
        gap = -offset % piece_length
        if gap and len(tree) > 1:
            files.append(pad_entry(gap, offset))
            offset += gap
    return files


def _merge_hybrid(v1: list[FileEntry], tree: list[_TreeFile], piece_length: int) -> list[FileEntry]:
    """Check that a hybrid torrent's two file lists describe the same data; join them."""
    data = [f for f in v1 if not f.pad]
    if len(data) != len(tree):
        raise MetainfoError(
            f"hybrid torrent: v1 lists {len(data)} files but the v2 file tree has {len(tree)}"
        )
    roots = {}
    for f, tf in zip(data, tree, strict=True):
        if f.path != tf.path or f.length != tf.length:
            raise MetainfoError(
                f"hybrid torrent: v1 file {'/'.join(f.path)!r} ({f.length} bytes) does not match "
                f"v2 file {'/'.join(tf.path)!r} ({tf.length} bytes)"
            )
        if f.length and f.offset % piece_length:
            raise MetainfoError(
                f"hybrid torrent: file {'/'.join(f.path)!r} does not start on a piece boundary "
                "(missing pad file)"
            )
        roots[f.path] = tf.root
    return [f if f.pad else _with_root(f, roots[f.path]) for f in v1]


def _with_root(f: FileEntry, root: bytes | None) -> FileEntry:
    return FileEntry(f.path, f.length, f.offset, f.pad, root, f.attr)


def _piece_layers(
    outer: dict[bytes, Any], files: list[FileEntry], piece_length: int, required: bool = True
) -> dict[bytes, bytes]:
    """The piece layers of all files larger than a piece, each checked against its root."""
    raw = _dict(outer.get(b"piece layers", {}), "piece layers")
    layers: dict[bytes, bytes] = {}
    for f in files:
        if f.pad or f.length <= piece_length or f.pieces_root is None:
            continue
        what = f"file {'/'.join(f.path)!r}"
        layer = raw.get(f.pieces_root)
        if layer is None and not required:
            continue
        if layer is None:
            raise MetainfoError(f"{what}: its piece layer is missing from 'piece layers'")
        layer = _bytes(layer, f"{what} piece layer")
        expected = -(-f.length // piece_length)
        if len(layer) != 32 * expected:
            raise MetainfoError(
                f"{what}: piece layer has {len(layer)} bytes, expected {32 * expected}"
            )
        hashes = [layer[i : i + 32] for i in range(0, len(layer), 32)]
        if root_from_layer(hashes, piece_length, f.length) != f.pieces_root:
            raise MetainfoError(f"{what}: piece layer does not hash to its pieces root")
        layers[f.pieces_root] = layer
    return layers


def _trackers(outer: dict[bytes, Any]) -> tuple[tuple[str, ...], ...]:
    tiers: list[tuple[str, ...]] = []
    if b"announce-list" in outer:
        for tier in _list(outer[b"announce-list"], "announce-list"):
            urls = tuple(
                u
                for u in (_text(x, "announce-list URL") for x in _list(tier, "announce-list tier"))
                if u
            )
            if urls:
                tiers.append(urls)
    if not tiers and b"announce" in outer:
        url = _text(outer[b"announce"], "announce")
        if url:
            tiers.append((url,))
    return tuple(tiers)


def _url_list(outer: dict[bytes, Any]) -> tuple[str, ...]:
    raw = outer.get(b"url-list", [])
    items = [raw] if isinstance(raw, bytes) else _list(raw, "url-list")
    return tuple(u for u in (_text(x, "url-list URL") for x in items) if u)


def _soft_text(value: Any) -> str:
    """Cosmetic fields: often in legacy encodings, never worth refusing a torrent for."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def load_torrent(data: bytes, *, require_piece_layers: bool = True) -> Metainfo:
    """Parse and validate a .torrent file (v1, v2 or hybrid).

    ``require_piece_layers=False`` accepts an info dict fetched from peers by magnet link
    (BEP 9), which carries no piece layers: a hybrid torrent is then verified by its v1
    hashes, and a v2 one needs the layers from peers (BEP 52 hash requests) first.
    """
    outer = _dict(bdecode(data), "a torrent file")
    info = _dict(outer.get(b"info"), "'info'")
    try:
        info_bytes = bencode(info)
    except BencodeError as exc:  # pragma: no cover - decoded values always re-encode
        raise MetainfoError(f"info dictionary cannot be re-encoded: {exc}") from None

    name = safe_components([_bytes(info.get(b"name"), "name")], what="name")[0]
    piece_length = _int(info.get(b"piece length"), "piece length", minimum=1)
    if piece_length & (piece_length - 1) or piece_length > MAX_PIECE_LENGTH:
        raise MetainfoError(f"piece length {piece_length} is not a power of two up to 1 GiB")

    version = info.get(b"meta version")
    has_v2 = version is not None
    if has_v2 and version != 2:
        raise MetainfoError(f"unsupported meta version {version!r:.20} (only 2 is known)")
    has_v1 = b"pieces" in info
    if not has_v1 and not has_v2:
        raise MetainfoError("info has neither 'pieces' (v1) nor 'meta version' 2 (v2)")

    tree: list[_TreeFile] = []
    if has_v2:
        if piece_length < BLOCK_SIZE:
            raise MetainfoError(f"v2 piece length {piece_length} is below 16 KiB")
        tree = list(_walk_tree(_dict(info.get(b"file tree"), "file tree"), ()))
        if len(tree) > MAX_FILES:
            raise MetainfoError(f"too many files ({len(tree)}; the limit is {MAX_FILES})")

    if has_v1:
        files, single_file = _v1_files(info, name)
        if has_v2:
            files = _merge_hybrid(files, tree, piece_length)
    else:
        files = _v2_layout(tree, piece_length)
        single_file = len(tree) == 1 and len(tree[0].path) == 1
    _check_unique(files)
    total = sum(f.length for f in files)
    if total > MAX_TOTAL_LENGTH:
        raise MetainfoError(f"torrent claims {total} bytes; the limit is {MAX_TOTAL_LENGTH}")
    if not any(f.length for f in files if not f.pad):
        raise MetainfoError("torrent contains no data (all files are empty)")

    pieces_v1 = None
    num_pieces = -(-total // piece_length)
    if has_v1:
        pieces_v1 = _bytes(info[b"pieces"], "pieces")
        if len(pieces_v1) != 20 * num_pieces:
            raise MetainfoError(
                f"'pieces' has {len(pieces_v1)} bytes, expected 20 x {num_pieces} pieces"
            )
    layers = _piece_layers(outer, files, piece_length, require_piece_layers) if has_v2 else {}

    private = info.get(b"private", 0) == 1
    date = outer.get(b"creation date")
    return Metainfo(
        name=name,
        piece_length=piece_length,
        files=tuple(files),
        total_length=total,
        info_bytes=info_bytes,
        info_hash_v1=hashlib.sha1(info_bytes).digest() if has_v1 else None,
        info_hash_v2=hashlib.sha256(info_bytes).digest() if has_v2 else None,
        pieces_v1=pieces_v1,
        piece_layers=layers,
        trackers=_trackers(outer),
        url_list=_url_list(outer),
        private=private,
        single_file=single_file,
        comment=_soft_text(outer.get(b"comment")),
        created_by=_soft_text(outer.get(b"created by")),
        creation_date=date if type(date) is int else None,
    )


def read_torrent(path: str | os.PathLike[str]) -> Metainfo:
    """Read and parse a .torrent file from disk."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(64 * 1024 * 1024 + 1)
    except OSError as exc:
        raise MetainfoError(
            f"cannot read torrent file {os.fspath(path)!r}: {exc.strerror}"
        ) from None
    if len(data) > 64 * 1024 * 1024:
        raise MetainfoError(f"torrent file {os.fspath(path)!r} is larger than 64 MiB")
    try:
        return load_torrent(data)
    except BencodeError as exc:
        raise MetainfoError(f"{os.fspath(path)!r} is not a torrent file: {exc}") from None
    except MetainfoError as exc:
        raise MetainfoError(f"{os.fspath(path)!r}: {exc}") from None


def torrent_bytes(meta: Metainfo) -> bytes:
    """The complete .torrent file for ``meta``; the info dict is ``meta.info_bytes`` verbatim."""
    outer: dict[bytes, Any] = {b"info": bdecode(meta.info_bytes)}
    urls = [u for tier in meta.trackers for u in tier]
    if urls:
        outer[b"announce"] = urls[0].encode()
    if len(urls) > 1 or len(meta.trackers) > 1:
        outer[b"announce-list"] = [[u.encode() for u in tier] for tier in meta.trackers]
    if meta.url_list:
        outer[b"url-list"] = [u.encode() for u in meta.url_list]
    if meta.piece_layers:
        outer[b"piece layers"] = dict(meta.piece_layers)
    if meta.comment:
        outer[b"comment"] = meta.comment.encode()
    if meta.created_by:
        outer[b"created by"] = meta.created_by.encode()
    if meta.creation_date is not None:
        outer[b"creation date"] = meta.creation_date
    data = bencode(outer)
    if meta.info_bytes not in data:  # pragma: no cover - strict bencode makes this impossible
        raise MetainfoError("internal error: info dictionary did not survive re-encoding")
    return data
