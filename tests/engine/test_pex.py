"""BEP 11 peer exchange: the pure per-peer state (stepped clock) and ours-to-ours on loopback."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hostile import HostilePeer, poll

from swarmhub.bencode import bencode
from swarmhub.engine.peer import EXT_IDS
from swarmhub.engine.pex import (
    _DIALABLE,
    FIRST_DELAY,
    FLAG_REACHABLE,
    INTERVAL,
    MAX_ADDED,
    MAX_DROPPED,
    MIN_RECEIVE_GAP,
    PexPeer,
)
from swarmhub.engine.session import Session
from swarmhub.engine.swarm import Swarm
from swarmhub.engine.torrent import Torrent, TorrentState
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import (
    MetadataRequest,
    PexMessage,
    decode_ext_handshake,
    decode_pex,
    encode_metadata_message,
    encode_pex,
)

A = ("10.0.0.1", 6881)
B = ("10.0.0.2", 6882)
C = ("10.0.0.3", 6883)


def test_first_message_after_delay_then_once_per_interval() -> None:
    p = PexPeer(100.0)
    current = {A: FLAG_REACHABLE, B: 0}
    assert p.poll(100.0 + FIRST_DELAY - 0.1, current) is None
    msg = p.poll(100.0 + FIRST_DELAY, current)
    assert msg == PexMessage(added=[A, B], dropped=[], added_flags=[FLAG_REACHABLE, 0])
    # a change right after is held until the next interval
    current2 = {B: 0, C: FLAG_REACHABLE}
    t = 100.0 + FIRST_DELAY
    assert p.poll(t + 1, current2) is None
    assert p.poll(t + INTERVAL - 0.1, current2) is None
    msg = p.poll(t + INTERVAL, current2)
    assert msg == PexMessage(added=[C], dropped=[A], added_flags=[FLAG_REACHABLE])
    # nothing changed: nothing sent
    assert p.poll(t + 2 * INTERVAL, current2) is None


def test_never_tells_a_peer_about_itself() -> None:
    p = PexPeer(0.0, first_delay=0.0)
    msg = p.poll(0.0, {A: 0, B: 0}, exclude={A})
    assert msg is not None and msg.added == [B]
    assert p.poll(0.0, {A: 0, B: 0}, exclude={A}) is None


def test_keeps_the_address_objects_it_is_given() -> None:
    """``lab simulate`` keeps one PexPeer per connection end: its books hold the caller's
    tuples, not copies (compiled, a ``tuple[str, int]`` value is stored as a new tuple)."""
    current = {A: 0, B: 0}
    p = PexPeer(0.0, first_delay=0.0)
    msg = p.poll(0.0, current)
    assert msg is not None and msg.added == [A, B]
    assert all(x is y for x, y in zip([*msg.added, *p.sent], [A, B, A, B], strict=True))


def test_caps_added_and_dropped_and_sends_the_rest_later() -> None:
    many = {(f"10.1.{i // 250}.{i % 250 + 1}", 7000 + i): 0 for i in range(120)}
    p = PexPeer(0.0, first_delay=0.0, interval=60.0)
    sent: list[tuple[str, int]] = []
    for k in range(3):
        msg = p.poll(60.0 * k, many)
        assert msg is not None and len(msg.added) <= MAX_ADDED and not msg.dropped
        sent += msg.added
    assert sorted(sent) == sorted(many) and len(sent) == len(set(sent))
    assert p.poll(180.0, many) is None
    dropped: list[tuple[str, int]] = []
    for k in range(3):
        msg = p.poll(240.0 + 60.0 * k, {})
        assert msg is not None and len(msg.dropped) <= MAX_DROPPED and not msg.added
        dropped += msg.dropped
    assert sorted(dropped) == sorted(many)
    # the encoded message is a valid ut_pex payload with at most 50 entries per list
    payload = encode_pex(PexMessage(added=sent[:MAX_ADDED], added_flags=[0] * MAX_ADDED))
    assert len(decode_pex(payload).added) == MAX_ADDED


def test_received_is_bounded_filtered_and_rate_limited() -> None:
    p = PexPeer(0.0)
    own = {("127.0.0.1", 5000)}
    junk = [("0.0.0.0", 1), ("224.0.0.1", 2), ("10.0.0.9", 0), ("127.0.0.1", 5000)]
    many = [(f"10.2.{i // 250}.{i % 250 + 1}", 8000 + i) for i in range(200)]
    got = p.received(10.0, PexMessage(added=junk + many), own=own)
    assert got == many[:MAX_ADDED]
    # a second message sooner than allowed is ignored; after the gap it is read
    assert p.received(10.0 + MIN_RECEIVE_GAP - 1, PexMessage(added=[A])) == []
    assert p.received(10.0 + 2 * MIN_RECEIVE_GAP, PexMessage(added=[A])) == [A]

    # the caller's address objects come back, not copies (compiled, unpacking each into
    # a new ``(host, port)`` made two tuples per address; lab simulate shares them)
    later = p.received(10.0 + 4 * MIN_RECEIVE_GAP, PexMessage(added=[A, B]), own=own)
    assert later == [A, B] and later[0] is A and later[1] is B


# ------------------------------------------------------------------------- loopback


def _meta(tmp: Path, private: bool = False) -> tuple[Metainfo, Path]:
    src = tmp / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(random.Random(3).randbytes(4_000_000))
    return create_torrent(src / "data.bin", piece_length=64 * 1024, private=private), src


def _connected_to(t: Torrent, peer_id: bytes) -> bool:
    return any(p.remote_id == peer_id for p in t.swarm.peers)  # type: ignore[attr-defined]


async def test_leecher_learns_the_other_peer_via_pex(tmp_path: Path) -> None:
    """Seeder S knows peer B; leecher L is told only S, and connects to B."""
    meta, src = _meta(tmp_path)
    slow = Settings().replace(upload_rate_limit=50_000)  # L must not finish first
    async with Session(slow, state_dir=tmp_path / "ss") as s, \
            Session(slow, state_dir=tmp_path / "sb") as b, \
            Session(state_dir=tmp_path / "sl") as lee:
        bport = await b.listen("127.0.0.1", 0)
        await b.add(meta, tmp_path / "b")
        sport = await s.listen("127.0.0.1", 0)
        st = await s.add(meta, src, peers=[("127.0.0.1", bport)])
        assert st.state is TorrentState.SEEDING
        await lee.listen("127.0.0.1", 0)
        lt = await lee.add(meta, tmp_path / "l", peers=[("127.0.0.1", sport)])
        # a hang guard: S's first PEX message goes FIRST_DELAY after its handshake with L
        await poll(lambda: _connected_to(lt, b.peer_id), 20 + FIRST_DELAY, "L connects to B")
        assert _connected_to(lt, s.peer_id)


class _SteppedClock:
    """A torrent's clock that a test moves forward (``offset``) instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def _spy_ticks(monkeypatch: pytest.MonkeyPatch, t: Torrent) -> list[float]:
    """The times ``t``'s core ticks from now on (the torrent's PEX tick follows each)."""
    ticks: list[float] = []
    real_tick = Swarm.tick

    def spy(swarm: Swarm, now: float) -> None:
        real_tick(swarm, now)
        if swarm is t.swarm:
            ticks.append(now)

    # on the class: a mypyc-compiled Swarm (`make setup`) has no per-instance methods
    monkeypatch.setattr(Swarm, "tick", spy)
    return ticks


async def _told_after_first_delay(peer: HostilePeer, clock: _SteppedClock,
                                  ticks: list[float]) -> list[tuple[str, int]]:
    """Step the torrent's clock past the first PEX delay and wait for its tick; then a
    metadata request, answered in order after anything that tick sent, collects the
    addresses the torrent's ut_pex messages told ``peer`` (which offered ut_pex as 7
    and ut_metadata as 3)."""
    seen = len(ticks)
    await poll(lambda: len(ticks) > seen, 20, "the torrent ticked once with the peer")
    clock.offset += FIRST_DELAY + 1
    stepped = clock()
    await poll(lambda: ticks[-1] >= stepped, 20, "the torrent ticked past the first PEX delay")
    peer.send(m.Extended(EXT_IDS["ut_metadata"], encode_metadata_message(MetadataRequest(0))))
    told: list[tuple[str, int]] = []
    while not isinstance(msg := await peer.recv(20), m.Extended) or msg.ext_id != 3:
        if isinstance(msg, m.Extended) and msg.ext_id == 7:
            told += decode_pex(msg.payload).added
    return told


@pytest.mark.parametrize("case", ["public", "private", "no-pex"])
async def test_pex_is_sent_only_for_public_torrents_with_pex_on(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str) -> None:
    """Seeder S knows peer B; a peer offering ut_pex connects. S's clock is stepped past
    the first PEX delay and S ticks; then a metadata request, answered in order after
    anything that tick sent, shows whether S told the peer about B."""
    meta, src = _meta(tmp_path, private=case == "private")
    clock = _SteppedClock()
    # B must not finish (and leave S: two seeds part) before S's PEX tick
    slow = Settings().replace(upload_rate_limit=50_000, pex=case != "no-pex")
    async with Session(slow, state_dir=tmp_path / "ss") as s, \
            Session(state_dir=tmp_path / "sb") as b:
        bport = await b.listen("127.0.0.1", 0)
        await b.add(meta, tmp_path / "b")
        sport = await s.listen("127.0.0.1", 0)
        st = await s.add(meta, src, peers=[("127.0.0.1", bport)], clock=clock)
        ticks = _spy_ticks(monkeypatch, st)
        await poll(lambda: _connected_to(st, b.peer_id), 20, "S connects to B")
        peer = await HostilePeer.open(sport, meta.info_hash)
        try:
            peer.send_ext_handshake(
                bencode({b"m": {b"ut_pex": 7, b"ut_metadata": 3}, b"v": b"hostile"}))
            await peer.their_ext_handshake()
            await poll(lambda: any("ut_pex" in p.ext_ids for p in st.peers), 20,
                       "S read the peer's extension handshake")
            told = await _told_after_first_delay(peer, clock, ticks)
        finally:
            await peer.close()
        assert _connected_to(st, b.peer_id)
    assert (("127.0.0.1", bport) in told) is (case == "public"), told


async def test_a_peer_that_dialled_us_is_known_and_told_by_its_listen_port(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """BEP 10 ``p`` both ways, with the real driver: our extension handshake says where we
    listen; a peer that dialled us (from an ephemeral port) and sent ``p`` is not dialled
    at that address when a tracker or PEX lists it, and PEX tells other peers that
    address, never the port it came from."""
    meta, src = _meta(tmp_path)
    clock = _SteppedClock()
    listen = ("127.0.0.1", 4321)  # never dialled: the test fails before a dial could go
    async with Session(state_dir=tmp_path / "ss") as s:
        sport = await s.listen("127.0.0.1", 0)
        st = await s.add(meta, src, clock=clock)
        ticks = _spy_ticks(monkeypatch, st)
        one = await HostilePeer.open(sport, meta.info_hash, peer_id=b"-HO0001-listen-one-1")
        two = await HostilePeer.open(sport, meta.info_hash, peer_id=b"-HO0001-listen-two-2")
        try:
            source = one.writer.get_extra_info("sockname")[:2]
            one.send_ext_handshake(bencode({b"m": {b"ut_pex": 7}, b"p": listen[1]}))
            ours = await one.expect(lambda e: isinstance(e, m.Extended) and e.ext_id == 0, 20)
            assert isinstance(ours, m.Extended)
            assert decode_ext_handshake(ours.payload).p == sport
            await poll(lambda: any(ps.listen_addr == listen for ps in st.swarm.peers.values()),
                       20, "S read the extension handshake's p")
            st.add_peers([listen, listen])  # a tracker answer and a PEX message
            assert listen not in st.swarm.dialer.connecting
            two.send_ext_handshake(bencode({b"m": {b"ut_pex": 7, b"ut_metadata": 3}}))
            await two.their_ext_handshake()
            await poll(lambda: sum("ut_pex" in p.ext_ids for p in st.peers) == 2, 20,
                       "S read both extension handshakes")
            told = await _told_after_first_delay(two, clock, ticks)
        finally:
            await one.close()
            await two.close()
    assert listen in told and tuple(source) not in told, (told, source)


@pytest.mark.parametrize("case", ["public", "private", "no-pex"])
async def test_received_pex_is_bounded_never_us_and_ignored_unless_public_and_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str,
) -> None:
    """A peer's ut_pex message reaches the core's add_peers: at most 50 addresses, never
    our own; for a private torrent or with PEX off we neither offer ut_pex nor read it."""
    meta, _ = _meta(tmp_path, private=case == "private")
    on = case == "public"
    async with Session(Settings().replace(pex=case != "no-pex"),
                       state_dir=tmp_path / "s") as ses:
        port = await ses.listen("127.0.0.1", 0)
        t = await ses.add(meta, tmp_path / "dl")
        added: list[tuple[str, int]] = []
        real_add = Swarm.add_peers

        def spy(swarm: Swarm, addrs: Iterable[tuple[str, int]], now: float,
                seeds: Iterable[tuple[str, int]] = ()) -> None:
            addrs = list(addrs)
            if swarm is t.swarm:
                added.extend(addrs)
            real_add(swarm, addrs, now, seeds)

        monkeypatch.setattr(Swarm, "add_peers", spy)  # on the class: see above
        peer = await HostilePeer.open(port, meta.info_hash)
        try:
            peer.send_ext_handshake(
                bencode({b"m": {b"ut_pex": 7, b"ut_metadata": 3}, b"v": b"hostile"}))
            theirs = await peer.their_ext_handshake()
            assert ("ut_pex" in theirs) is on
            # closed loopback ports: dials fail at once and never leave the machine
            many = [(f"127.0.{i // 250}.{i % 250 + 2}", 9) for i in range(120)]
            msg = PexMessage(added=[("127.0.0.1", port), *many])
            peer.send(m.Extended(EXT_IDS["ut_pex"], encode_pex(msg)))
            # Messages are read in order: the answer to this request proves the PEX
            # message was handled, and that the connection survived it.
            peer.send(m.Extended(EXT_IDS["ut_metadata"],
                                 encode_metadata_message(MetadataRequest(0))))
            await peer.expect(lambda ev: isinstance(ev, m.Extended) and ev.ext_id == 3, 20)
            assert ses.peer_count == 1, "the PEX sender is still connected"
        finally:
            await peer.close()
    assert added == (many[:MAX_ADDED] if on else [])


def test_what_was_told_is_dropped_oldest_first_and_never_told_twice() -> None:
    """Against a plain model of the books (an insertion-ordered dict, as BEP 11 asks:
    tell each address once, drop what left, at most 50 of each per message)."""
    rng = random.Random(7)
    addrs = [(f"10.0.{i // 250}.{i % 250}", 6881) for i in range(300)]
    pex = PexPeer(0.0, first_delay=0.0, interval=1.0)
    model: dict[tuple[str, int], None] = {}
    now = 0.0
    for _ in range(40):
        current = {a: 0 for a in rng.sample(addrs, rng.randrange(0, 200))}
        msg = pex.poll(now, current)
        added = [a for a in current if a not in model][:MAX_ADDED]
        dropped = [a for a in model if a not in current][:MAX_DROPPED]
        if not added and not dropped:
            assert msg is None
        else:
            assert msg is not None
            assert (msg.added, msg.dropped) == (added, dropped)
            for a in dropped:
                del model[a]
            model.update(dict.fromkeys(added))
        assert list(pex.sent) == list(model)
        now += 1.0


def test_the_dialable_cache_holds_every_host_of_a_10000_peer_swarm() -> None:
    """``lab simulate`` runs 10,000 hosts in one process, each told of the others by PEX:
    a cache smaller than that was emptied again and again, and the addresses parsed anew."""
    hosts = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(10_001)]
    _DIALABLE.clear()
    for start in range(0, len(hosts), MAX_ADDED):
        msg = PexMessage(added=[(h, 6881) for h in hosts[start:start + MAX_ADDED]])
        assert len(PexPeer(0.0).received(0.0, msg)) == len(msg.added)
    assert set(hosts) <= _DIALABLE.keys()
