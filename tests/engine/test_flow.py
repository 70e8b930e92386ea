"""Per-peer flow control: the read gate, the byte-bounded request queue, and backpressure
on the standard asyncio loop (the subprocess tests in test_hostile_memory.py run uvloop)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hostile import HostilePeer, poll

from swarmhub.engine.flow import BACKLOG, RATE, SOON, UPLOAD_BATCH, ReadGate, reply_limit
from swarmhub.engine.peerstate import RequestQueue
from swarmhub.engine.session import Session
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.settings import MiB, Settings
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import MetadataRequest, encode_metadata_message


class FakeTransport:
    """Just what ReadGate uses: a write-buffer size and pause/resume of reading."""

    def __init__(self) -> None:
        self.buffered = 0
        self.reading = True
        self.calls: list[str] = []

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return False



def test_the_gate_is_open_unless_paused_for_the_backlog_or_over_its_limit() -> None:
    """``open`` (the receive path's one call per check) is ``paused(BACKLOG) or over()``
    negated: a rate pause alone does not stop handling what was already read."""
    tr = FakeTransport()
    gate = ReadGate(tr, limit=100)  # type: ignore[arg-type]
    assert gate.open()
    tr.buffered = 101
    assert not gate.open() and gate.over()
    tr.buffered = 100
    assert gate.open()
    gate.pause(RATE)
    assert gate.open()
    gate.pause(BACKLOG)
    assert not gate.open()
    gate.resume(BACKLOG)
    assert gate.open()
    gate.pause(SOON)  # replies the socket took at once: the rest waits for a later callback
    assert not gate.open() and not tr.reading
    gate.resume(RATE)
    gate.resume(SOON)
    assert gate.open() and tr.reading


def test_read_gate_reads_again_only_when_no_reason_is_left() -> None:
    tr = FakeTransport()
    gate = ReadGate(tr, limit=100)  # type: ignore[arg-type]
    tr.buffered = 101
    assert gate.over() and not gate.over(-1)
    tr.buffered = 60
    assert not gate.over() and gate.over(41)
    gate.pause(BACKLOG)
    gate.pause(RATE)
    gate.pause(BACKLOG)
    gate.resume(RATE)
    assert not tr.reading and gate.paused(BACKLOG) and not gate.paused(RATE)
    gate.resume(RATE)  # not paused for that: nothing happens
    gate.resume(BACKLOG)
    assert tr.reading and tr.calls == ["pause", "resume"]


def test_reply_limit_stays_above_what_uploads_queue() -> None:
    assert reply_limit(4 * MiB) == 8 * MiB
    assert reply_limit(1 * MiB) == 1 * MiB + UPLOAD_BATCH


def test_request_queue_counts_bytes() -> None:
    q = RequestQueue()
    for r in (m.Request(0, 0, 16384), m.Request(1, 0, 1000), m.Request(2, 0, 16384)):
        q.append(r)
    assert (len(q), q.bytes, q[0]) == (3, 33768, m.Request(0, 0, 16384))
    q.remove(m.Request(1, 0, 1000))
    assert q.bytes == 32768 and q.fits(1, 32769) and not q.fits(2, 32769)
    with pytest.raises(ValueError):
        q.remove(m.Request(9, 0, 1))
    assert q.popleft() == m.Request(0, 0, 16384) and q.bytes == 16384
    assert list(q) == [m.Request(2, 0, 16384)]
    q.clear()
    assert not q and q.bytes == 0


async def test_seeder_stops_reading_a_peer_that_does_not_read_and_resumes(
    tmp_path: Path,
) -> None:
    data = tmp_path / "payload.bin"
    data.write_bytes(random.Random(2).randbytes(1024 * 16384))  # a 20 KiB info dict
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=16384)
    settings = Settings(send_buffer_bytes=1 * MiB)
    async with Session(settings, state_dir=tmp_path / "state") as session:
        port = await session.listen("127.0.0.1", 0)
        torrent = await session.add(meta, tmp_path, seed_mode=True)
        peer = await HostilePeer.open(port, meta.info_hash)
        peer.send_ext_handshake()
        ut = (await peer.their_ext_handshake())["ut_metadata"]
        n = 5000  # 80 MB of replies
        request = m.encode(m.Extended(ut, encode_metadata_message(MetadataRequest(0))))
        peer.send_raw(request * n)
        (ours,) = torrent.peers
        transport = ours.proto.transport
        assert transport is not None
        gate = ours.proto._gate
        assert gate is not None and gate.limit == 3 * MiB  # 1 MiB + one upload batch
        await poll(lambda: gate.paused(BACKLOG), 30, "the seeder stops reading")
        # Bounded: the limit, plus at most one batch of replies corked past it.
        assert transport.get_write_buffer_size() <= gate.limit + 16 * 1024 + 100
        # Reading lets it resume: every request is answered.
        replies, _ = await peer.count_until(
            lambda ev: False, 60, stop_after=n,
            counted=lambda ev: isinstance(ev, m.Extended) and ev.ext_id == 3)
        assert replies == n
        await poll(lambda: not gate.paused(BACKLOG), 10, "the seeder reads again")
        await peer.close()
