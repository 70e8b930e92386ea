"""Validation of file paths taken from torrents, so that no torrent can write outside its folder.

A torrent names its files with lists of components chosen by whoever made it. Each
component becomes a directory or file name on the user's disk, so anything that could
escape the download folder (``..``, absolute paths, drive letters, separators), hide
from the user (control characters) or break on Windows (reserved device names, trailing
dots or spaces) is refused here, once, before storage ever sees the path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from swarmhub.errors import MetainfoError

__all__ = ["MAX_COMPONENT_BYTES", "safe_components"]

#: The common file-name limit (ext4, NTFS, APFS) in bytes of UTF-8.
MAX_COMPONENT_BYTES = 255

_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def _show(parts: Sequence[object]) -> str:
    """A readable rendering of a (possibly hostile) path for error messages."""
    shown = []
    for part in parts:
        if isinstance(part, bytes):
            part = part.decode("utf-8", "backslashreplace")
        shown.append(repr(part) if isinstance(part, str) else f"<{type(part).__name__}>")
    return "[" + ", ".join(shown) + "]"


def _problem(name: str) -> str | None:
    """Why ``name`` cannot be a file or directory name, or None when it can."""
    if not name:
        return "an empty component"
    if name in (".", ".."):
        return f"the component {name!r} (path traversal)"
    if "/" in name or "\\" in name:
        return f"a path separator in {name!r}"
    if "\x00" in name:
        return f"a NUL byte in {name!r}"
    if _CONTROL.search(name):
        return f"a control character in {name!r}"
    if _DRIVE.match(name):
        return f"a drive letter in {name!r}"
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        return f"the Windows reserved name {name!r}"
    if name.endswith((".", " ")):
        return f"{name!r} ending in a dot or space (not allowed on Windows)"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{name!r}, which is not valid Unicode"
    if size > MAX_COMPONENT_BYTES:
        return f"a component of {size} bytes (the limit is {MAX_COMPONENT_BYTES})"
    return None


def safe_components(parts: Sequence[bytes | str], *, what: str) -> tuple[str, ...]:
    """Decode and check the components of a torrent path; raise MetainfoError if unsafe.

    ``parts`` are bytes straight from bencode (decoded as strict UTF-8) or str. ``what``
    says which path this is (``"name"``, ``"file 3"``) so the user can find it.
    """
    if not isinstance(parts, list | tuple):
        raise MetainfoError(f"{what}: a path must be a list of strings, not {type(parts).__name__}")
    if not parts:
        raise MetainfoError(f"{what}: the path is empty")
    names: list[str] = []
    for part in parts:
        if isinstance(part, bytes):
            try:
                name = part.decode("utf-8")
            except UnicodeDecodeError:
                raise MetainfoError(f"{what}: path {_show(parts)} is not valid UTF-8") from None
        elif isinstance(part, str):
            name = part
        else:
            raise MetainfoError(f"{what}: path {_show(parts)} has a component that is not a string")
        problem = _problem(name)
        if problem is not None:
            raise MetainfoError(f"{what}: unsafe path {_show(parts)}: {problem}")
        names.append(name)
    return tuple(names)
