from __future__ import annotations

import base64
import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.errors import MetainfoError
from swarmhub.metainfo import (
    Magnet,
    TorrentVersion,
    create_torrent,
    make_magnet,
    parse_magnet,
)

V1 = hashlib.sha1(b"x").digest()
V2 = hashlib.sha256(b"x").digest()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("magnet") / "my file.bin"
    path.write_bytes(bytes(range(256)) * 300)
    return path


@pytest.mark.parametrize("version", list(TorrentVersion))
def test_make_magnet_round_trips(data_file: Path, version: TorrentVersion) -> None:
    meta = create_torrent(
        data_file,
        version=version,
        trackers=[["http://t1/announce", "udp://t2:80"], ["http://t3/a?x=1&y=2"]],
        url_list=["http://seed/files/"],
    )
    uri = make_magnet(meta)
    assert uri.startswith("magnet:?xt=urn:")
    if meta.info_hash_v1:
        assert f"xt=urn:btih:{meta.info_hash_v1.hex()}" in uri
    else:
        assert "btih" not in uri
    if meta.info_hash_v2:
        assert f"xt=urn:btmh:1220{meta.info_hash_v2.hex()}" in uri
    else:
        assert "btmh" not in uri
    assert "dn=my%20file.bin" in uri
    assert "&x=1" not in uri  # the tracker's query string is escaped
    magnet = parse_magnet(uri)
    assert magnet == Magnet(
        info_hash_v1=meta.info_hash_v1,
        info_hash_v2=meta.info_hash_v2,
        name="my file.bin",
        trackers=("http://t1/announce", "udp://t2:80", "http://t3/a?x=1&y=2"),
        web_seeds=("http://seed/files/",),
    )
    assert magnet.info_hash == meta.info_hash


def test_make_magnet_overrides_trackers_and_seeds(data_file: Path) -> None:
    meta = create_torrent(data_file, version=TorrentVersion.V1, trackers=[["http://old/"]])
    magnet = parse_magnet(make_magnet(meta, trackers=["http://new/"], web_seeds=[]))
    assert magnet.trackers == ("http://new/",)
    assert magnet.web_seeds == ()


def test_v2_info_hash_is_truncated_for_the_wire() -> None:
    magnet = parse_magnet("magnet:?xt=urn:btmh:1220" + V2.hex())
    assert magnet.info_hash_v1 is None
    assert magnet.info_hash == V2[:20]


def test_base32_and_uppercase_hex_btih() -> None:
    b32 = base64.b32encode(V1).decode()
    assert parse_magnet("magnet:?xt=urn:btih:" + b32).info_hash_v1 == V1
    assert parse_magnet("magnet:?xt=urn:btih:" + b32.lower()).info_hash_v1 == V1
    assert parse_magnet("MAGNET:?xt=URN:BTIH:" + V1.hex().upper()).info_hash_v1 == V1


def test_peers_numbered_keys_and_unknown_keys() -> None:
    uri = (
        f"magnet:?xt.1=urn:btih:{V1.hex()}&xt.2=urn:ed2k:abc&tr.1=http%3A%2F%2Fa%2F"
        "&tr.2=http://b/&x.pe=10.0.0.1:6881&x.pe=[::1]:51413&x.pe=host.example:1&kt=foo"
    )
    magnet = parse_magnet(uri)
    assert magnet.info_hash_v1 == V1
    assert magnet.trackers == ("http://a/", "http://b/")
    assert magnet.peers == (("10.0.0.1", 6881), ("::1", 51413), ("host.example", 1))
    assert magnet.name is None


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "http://example.com/",
        "magnet:",
        "magnet:?",
        "magnet:?dn=x",
        "magnet:?xt=urn:ed2k:abc",
        f"magnet:?xt=urn:btih:{V1.hex()[:-1]}",
        f"magnet:?xt=urn:btih:{V1.hex()}00",
        "magnet:?xt=urn:btih:" + "g" * 40,
        "magnet:?xt=urn:btih:" + "1" * 32,  # '1' is not base32
        f"magnet:?xt=urn:btih: {V1.hex()[1:]}",
        f"magnet:?xt=urn:btmh:1114{V2.hex()}",
        f"magnet:?xt=urn:btmh:1220{V2.hex()[:-2]}",
        f"magnet:?xt=urn:btih:{V1.hex()}&xt=urn:btih:{'00' * 20}",
        f"magnet:?xt=urn:btih:{V1.hex()}&x.pe=1.2.3.4",
        f"magnet:?xt=urn:btih:{V1.hex()}&x.pe=1.2.3.4:0",
        f"magnet:?xt=urn:btih:{V1.hex()}&x.pe=1.2.3.4:70000",
        f"magnet:?xt=urn:btih:{V1.hex()}&x.pe=::1:80",
        f"magnet:?xt=urn:btih:{V1.hex()}&novalue",
    ],
)
def test_malformed_magnets_raise_metainfo_error(uri: str) -> None:
    with pytest.raises(MetainfoError):
        parse_magnet(uri)


def test_non_string_is_refused() -> None:
    with pytest.raises(MetainfoError):
        parse_magnet(b"magnet:?xt=urn:btih:" + V1.hex().encode())  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_metainfo_error(text: str) -> None:
    for uri in (text, "magnet:?" + text, f"magnet:?xt=urn:btih:{V1.hex()}&" + text):
        with contextlib.suppress(MetainfoError):
            parse_magnet(uri)


urls = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30)


@given(
    st.binary(min_size=20, max_size=20) | st.none(),
    st.binary(min_size=32, max_size=32),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=30),
    st.lists(urls, max_size=4, unique=True),
    st.lists(urls, max_size=3, unique=True),
)
def test_round_trip_property(
    v1: bytes | None, v2: bytes, name: str, trackers: list[str], seeds: list[str]
) -> None:
    from swarmhub.metainfo import FileEntry, Metainfo

    meta = Metainfo(
        name=name,
        piece_length=16384,
        files=(FileEntry((name or "x",), 1, 0),),
        total_length=1,
        info_bytes=b"de",
        info_hash_v1=v1,
        info_hash_v2=v2,
        pieces_v1=None,
    )
    magnet = parse_magnet(make_magnet(meta, trackers=trackers, web_seeds=seeds))
    assert magnet.info_hash_v1 == v1
    assert magnet.info_hash_v2 == v2
    assert magnet.name == name
    assert magnet.trackers == tuple(trackers)
    assert magnet.web_seeds == tuple(seeds)
