from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.errors import MetainfoError
from swarmhub.metainfo.paths import safe_components


def test_bytes_and_str_components_decode_to_str() -> None:
    assert safe_components([b"dir", "caf\u00e9.txt".encode()], what="file 0") == (
        "dir",
        "caf\u00e9.txt",
    )
    assert safe_components(("a", "b"), what="x") == ("a", "b")


def test_ordinary_names_pass() -> None:
    names = [".pad", "..hidden", "a..b", "CONSOLE.txt", "COM10", "file.", "x" * 255]
    for name in names[:5] + names[6:]:
        assert safe_components([name], what="t") == (name,)


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [
        ([], "empty"),
        ([b""], "empty component"),
        ([b"a", b""], "empty component"),
        ([b".."], "path traversal"),
        ([b"..", b"x"], "path traversal"),
        ([b"."], "path traversal"),
        ([b"/etc/passwd"], "separator"),
        ([b"a/b"], "separator"),
        ([b"a\\b"], "separator"),
        ([b"a\x00b"], "NUL"),
        ([b"a\nb"], "control character"),
        ([b"bell\x07"], "control character"),
        ([b"del\x7f"], "control character"),
        ([b"C:"], "drive letter"),
        ([b"c:evil"], "drive letter"),
        ([b"CON"], "reserved"),
        ([b"con.txt"], "reserved"),
        ([b"CON.txt"], "reserved"),
        ([b"Lpt9.tar.gz"], "reserved"),
        ([b"COM1"], "reserved"),
        ([b"aux "], "reserved"),
        ([b"nul.x"], "reserved"),
        ([b"trailing."], "dot or space"),
        ([b"trailing "], "dot or space"),
        ([b"\xff\xfe"], "UTF-8"),
        ([b"x" * 256], "256 bytes"),
        (["\u00e9" * 128], "256 bytes"),
        (["bad\udcff"], "not valid Unicode"),
        ([b"ok", 5], "not a string"),
    ],
)
def test_unsafe_paths_are_refused_naming_the_path(parts: list[object], fragment: str) -> None:
    with pytest.raises(MetainfoError) as info:
        safe_components(parts, what="file 7")  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("file 7: ")
    assert fragment in message
    if parts and isinstance(parts[0], bytes) and parts[0]:
        # The offending path is shown so the user can find it in the torrent.
        shown = repr(parts[0].decode("utf-8", "backslashreplace"))[1:-1]
        assert shown[:4] in message


def test_a_bare_string_is_not_a_path_list() -> None:
    with pytest.raises(MetainfoError, match="list"):
        safe_components(b"abc", what="name")  # type: ignore[arg-type]


@given(st.lists(st.text(max_size=12) | st.binary(max_size=12), max_size=5))
def test_accepted_paths_stay_inside_the_folder(parts: list[str | bytes]) -> None:
    try:
        result = safe_components(parts, what="fuzz")
    except MetainfoError:
        return
    base = "/download/root"
    joined = os.path.normpath(os.path.join(base, *result))
    assert joined.startswith(base + "/")
    assert len(joined.split("/")) == 3 + len(result)  # no component collapsed or split
    for name in result:
        assert name not in ("", ".", "..")
        assert not any(c in name for c in "/\\\x00")
