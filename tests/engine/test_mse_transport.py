"""Encrypted connections between our own sessions over loopback, in each pair of modes."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import pytest

from swarmhub.engine.mse_transport import CipherTransport
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import Torrent, TorrentState
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings


def make_data(root: Path, sizes: list[int]) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        (root / f"file{i}.bin").write_bytes(rng.randbytes(size))
    return root


def streams(t: Torrent) -> list[str]:
    """How each connected peer's stream travels: rc4, plaintext (through the MSE layer)
    or plain (no layer at all)."""
    out = []
    for p in t.peers:
        tr = p.proto.transport
        if isinstance(tr, CipherTransport):
            # A plaintext stream reads straight into the peer protocol's buffer.
            reads_direct = tr.layer.raw.get_protocol() is p.proto
            assert reads_direct is not tr.layer.encrypted
            out.append("rc4" if tr.layer.encrypted else "plaintext")
        else:
            out.append("plain")
    return out


def torrent(tmp: Path, version: TorrentVersion = TorrentVersion.HYBRID) -> Metainfo:
    src = make_data(tmp / "src" / "payload", [700_001, 300_000])
    return create_torrent(src, version=version, piece_length=64 * 1024)


async def download(meta: Metainfo, tmp: Path, seed_mode: str, leech_mode: str,
                   prefer_rc4: bool = True) -> tuple[list[str], list[str]]:
    """Seed with one mode, download with the other; return both sides' peer streams (the
    seed's upload is capped so the connection is still up when we look)."""
    slow = Settings(encryption=seed_mode, upload_rate_limit=1_000_000, prefer_rc4=prefer_rc4)
    async with Session(slow, state_dir=tmp / "sa") as seeder, \
            Session(Settings(encryption=leech_mode), state_dir=tmp / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, tmp / "src")
        t = await leecher.add(meta, tmp / "dl", peers=[("127.0.0.1", port)])
        deadline = time.monotonic() + 20
        while not (st.peers and t.peers):
            assert time.monotonic() < deadline and not t.complete.is_set()
            await asyncio.sleep(0.01)
        seen = streams(st), streams(t)
        await asyncio.wait_for(t.complete.wait(), 60)
        assert t.state is TorrentState.SEEDING
    for f in meta.data_files:
        assert (tmp / "dl" / meta.name).joinpath(*f.path).read_bytes() == \
            (tmp / "src" / meta.name).joinpath(*f.path).read_bytes()
    return seen


@pytest.mark.parametrize("version", list(TorrentVersion), ids=lambda v: v.value)
async def test_prefer_to_prefer_is_rc4_with_prefer_rc4(tmp_path: Path,
                                                      version: TorrentVersion) -> None:
    """The SKEY is the wire info hash: v1, or v2 truncated for a v2-only torrent."""
    assert await download(torrent(tmp_path, version), tmp_path, "prefer", "prefer") \
        == (["rc4"], ["rc4"])


async def test_prefer_to_prefer_is_an_obfuscated_plaintext_stream_by_default(
        tmp_path: Path) -> None:
    """Like libtorrent (prefer_rc4 off): the handshake is encrypted, the payload is not."""
    assert await download(torrent(tmp_path), tmp_path, "prefer", "prefer", prefer_rc4=False) \
        == (["plaintext"], ["plaintext"])


@pytest.mark.parametrize(("seed", "leech", "expected"), [
    ("require", "require", (["rc4"], ["rc4"])),
    ("require", "prefer", (["rc4"], ["rc4"])),
    ("prefer", "require", (["rc4"], ["rc4"])),
    ("prefer", "off", (["plaintext"], ["plain"])),  # a plaintext dialer is still accepted
    ("off", "prefer", (["plain"], ["plain"])),  # encrypted refused: retried in plaintext
])
async def test_modes_that_can_talk_do(tmp_path: Path, seed: str, leech: str,
                                      expected: tuple[list[str], list[str]]) -> None:
    assert await download(torrent(tmp_path), tmp_path, seed, leech) == expected


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line {text!r}:\n{caplog.text}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("seed", "leech", "line"), [
    ("require", "off", "refusing a plaintext connection from 127.0.0.1:"),
    ("off", "require", "not trying plaintext (--encryption require)"),
])
async def test_require_never_talks_plaintext(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             seed: str, leech: str, line: str) -> None:
    caplog.set_level(logging.INFO, logger="swarmhub.engine.mse_transport")
    meta = torrent(tmp_path)
    async with Session(Settings(encryption=seed), state_dir=tmp_path / "sa") as seeder, \
            Session(Settings(encryption=leech), state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, tmp_path / "src")
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        await wait_for_log(caplog, line, 20)
        assert not st.peers and not t.peers
        assert t.num_have == 0


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 5555) if name == "peername" else default


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += data


async def test_a_plaintext_handshake_split_into_single_bytes_passes_through_untouched() -> None:
    from swarmhub.engine.mse_transport import MSELayer

    inner = Recorder()
    layer = MSELayer(inner, mode="prefer")
    raw = FakeTransport()
    layer.connection_made(raw)
    hs = b"\x13BitTorrent protocol" + bytes(8) + b"\x01" * 20 + b"\x02" * 20 + b"tail"
    for i in range(len(hs)):
        layer.data_received(hs[i:i + 1])
        assert bytes(inner.got) == (hs[:i + 1] if i >= 19 else b"")
    assert await layer.negotiated is None
    assert not layer.encrypted and not raw.aborted and not raw.sent


async def test_garbage_from_a_stranger_is_answered_with_a_key_then_dropped() -> None:
    """Not plaintext, so it must be an encrypted handshake: we send Yb + PadB, look for the
    sync hash within 512 bytes of padding, then give up and drop the connection."""
    from swarmhub.engine.mse_transport import MSELayer

    inner = Recorder()
    layer = MSELayer(inner, mode="prefer", skeys=lambda: [b"\x01" * 20])
    raw = FakeTransport()
    layer.connection_made(raw)
    layer.data_received(random.Random(3).randbytes(96 + 400))
    assert 96 <= len(raw.sent) <= 96 + 512 and not raw.aborted
    layer.data_received(random.Random(4).randbytes(200))
    assert raw.aborted
    assert "no HASH('req1', S) within 512 bytes" in (await layer.negotiated or "")
    assert not inner.got
