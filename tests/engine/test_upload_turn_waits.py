"""The driver's side of upload turns (``upload_ahead``): the core's grants are computed
once per change (a write, a peer's queue filling, or the look-again timer standing in for
the kernel draining the send queues) and only the waiting peers granted a turn wake.

Real swarm core, stub peers and transports (their queued bytes are what the test says),
no sockets; the test calls the look-again pass itself instead of waiting for its timer.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

from swarmhub.engine.actions import Serve
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.engine.uploads import Uploader
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.connection import PeerConnection

PIECE = 6 * BLOCK_SIZE  # the least budget (swarm._AHEAD_MIN): one piece ahead
PIECES = 8
TURNS = Settings(super_seeding=False, upload_ahead=0.02,  # 96 KiB: one piece ahead,
                 upload_turn_piece_time=0.0)  # whatever a piece takes to send


class Transport:
    """Counts what was written and not yet "sent" (the test drains it)."""

    def __init__(self) -> None:
        self.queued = 0

    def get_write_buffer_size(self) -> int:
        return self.queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: no SIOCOUTQNSD


class Proto:
    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name = name
        self.transport = Transport()
        self.writable = True
        self._log = log

    def run_uncorked(self, fn: Any) -> bool:
        return False

    async def wait_writable(self) -> None:
        return None

    def writelines(self, parts: list[Any]) -> None:
        size = sum(len(p) for p in parts[1::2])  # header, block, header, block...
        self.transport.queued += size
        self._log.append((self.name, size))


class Peer(SimpleNamespace):
    __hash__ = object.__hash__  # a handle: hashable by identity


def make_peer(name: str, log: list[tuple[str, int]]) -> Peer:
    conn = PeerConnection(our_reserved=m.make_reserved())
    conn.send(m.Handshake(m.make_reserved(), bytes(20), name.encode().ljust(20, b"-")))
    conn.set_num_pieces(PIECES, piece_length=PIECE, total_length=PIECES * PIECE)
    return Peer(name=name, proto=Proto(name, log), conn=conn, closed=False,
                upload_wakeup=asyncio.Event())


class Rig:
    """A seed's uploader over the real core, its peers interested and unchoked."""

    def __init__(self, names: list[str], settings: Settings = TURNS) -> None:
        self.log: list[tuple[str, int]] = []
        self.peers = {n: make_peer(n, self.log) for n in names}
        s = self.swarm = Swarm(PIECES, PIECE, PIECES * PIECE, settings,
                               rng=random.Random(3), now=0.0, have=b"\x01" * PIECES)
        for i, peer in enumerate(self.peers.values()):
            s.connected(peer, (f"10.0.0.{i + 1}", 6881), bytes(20), fast=True, now=0.0)
            s.message(peer, m.Interested(), 0.0)
        s.tick(0.0)
        s.take()
        self.grant_passes = 0
        torrent = SimpleNamespace(settings=settings, swarm=s, clock=lambda: 0.0,
                                  meta=SimpleNamespace(piece_length=PIECE, pieces_v1=None,
                                                       info_hash_v2=None),
                                  _flush=lambda: None)
        self.up = up = Uploader(torrent, RateLimiter(0))  # type: ignore[arg-type]
        for i in range(PIECES):
            up._cache[i] = bytes([i]) * PIECE
        grants_now = up._grants_now

        def counted() -> dict[Any, int]:
            self.grant_passes += 1
            return grants_now()

        up._grants_now = counted  # type: ignore[method-assign]
        self.woken: list[str] = []  # each return from a wait for a turn
        wait_turn = up._wait_turn

        async def waited(peer: Any) -> None:
            await wait_turn(peer)
            self.woken.append(peer.name)

        up._wait_turn = waited  # type: ignore[method-assign]
        schedule = up._schedule_regrant

        def no_timer(delay: float) -> None:
            # The look-again timer is the test's to run (``up._wake_granted()``): a real
            # call_later fired between two settles on a loaded machine and added a pass.
            if delay <= 0:
                schedule(delay)

        up._schedule_regrant = no_timer  # type: ignore[method-assign]
        self.tasks: list[asyncio.Task[None]] = []

    def ask(self, name: str, index: int) -> None:
        peer = self.peers[name]
        for begin in range(0, PIECE, BLOCK_SIZE):
            self.swarm.message(peer, m.Request(index, begin, BLOCK_SIZE), 0.0)
        for action in self.swarm.take():  # the torrent's driver: Serve -> wake
            if isinstance(action, Serve):
                self.up.wake(action.peer)

    def serve(self) -> None:
        self.tasks = [asyncio.create_task(self.up.serve(p)) for p in self.peers.values()]

    def drain(self, name: str, nbytes: int) -> None:
        tr = self.peers[name].proto.transport
        tr.queued = max(0, tr.queued - nbytes)

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_waiting_peer_is_woken_only_when_granted_and_one_pass_per_write() -> None:
    rig = Rig(["a", "b", "c", "d", "e"])
    for i, name in enumerate("abcde"):
        rig.ask(name, i)
    rig.serve()
    await rig.settle()
    # a's piece fills the budget; the others wait without looking again.
    assert rig.log == [("a", PIECE)]
    assert set(rig.up._waiters) == {rig.peers[n] for n in "bcde"}
    assert not rig.woken
    passes = rig.grant_passes
    await rig.settle()
    assert rig.grant_passes == passes  # nothing changed: nobody recomputes
    # A block of a's piece left: b, first in turn, gets its piece; only b wakes.
    rig.drain("a", BLOCK_SIZE)
    rig.up._wake_granted()  # the look-again timer
    await rig.settle()
    assert rig.log[1:] == [("b", PIECE)]
    assert set(rig.up._waiters) == {rig.peers[n] for n in "cde"}
    assert rig.woken == ["b"]  # c, d and e slept through the pass and b's write
    # Each write costs one pass over the grants, not one per waiting peer.
    assert rig.grant_passes - passes <= 2  # the timer's pass, the one after b's write
    await rig.close()


async def test_bytes_go_in_turn_order_a_piece_per_turn() -> None:
    rig = Rig(["a", "b", "c"])
    for i, name in enumerate("abc"):
        rig.ask(name, i)
    rig.serve()
    for _ in range(40):  # the uplink sends a block at a time, from the oldest queue
        await rig.settle()
        for name in "abc":
            if rig.peers[name].proto.transport.queued:
                rig.drain(name, BLOCK_SIZE)
                break
        rig.up._wake_granted()
    order = [name for name, _ in rig.log]
    assert sum(size for _, size in rig.log) == 3 * PIECE
    assert order == sorted(order)  # a's whole piece, then b's, then c's
    await rig.close()


async def test_a_lone_peer_is_never_held_by_its_own_queue() -> None:
    rig = Rig(["a"])
    rig.ask("a", 0)
    rig.ask("a", 1)
    rig.peers["a"].proto.transport.queued = 8 << 20  # its own socket is far behind
    rig.serve()
    await rig.settle()
    assert rig.log == [("a", PIECE), ("a", PIECE)]  # no timer, no drain needed
    assert not rig.up._waiters
    await rig.close()


async def test_a_peer_whose_queue_fills_while_the_uplink_is_free_goes_at_once() -> None:
    rig = Rig(["a", "b"])
    rig.ask("b", 1)
    rig.serve()
    await rig.settle()
    assert rig.log == [("b", PIECE)]
    rig.drain("b", PIECE)  # b's piece left; no timer runs
    rig.ask("a", 0)
    await rig.settle()
    assert rig.log[1:] == [("a", PIECE)]
    assert not rig.up._waiters
    await rig.close()


async def test_a_peer_granted_a_turn_is_sent_to_from_its_receive_callback() -> None:
    rig = Rig(["a", "b"])  # no serving tasks: only what the callbacks send
    rig.ask("a", 0)
    assert rig.log == [("a", PIECE)]
    assert not rig.peers["a"].upload_wakeup.is_set()
    rig.ask("b", 1)  # a's piece holds the budget: b waits its turn, parked
    assert rig.log == [("a", PIECE)]
    assert rig.peers["b"] in rig.up._parked


async def test_a_peer_waiting_only_for_its_turn_is_written_by_the_grants_pass() -> None:
    """No task wakes for it (three wake-ups a piece at 32 KiB pieces): the pass that
    grants the turn writes the blocks, and parks the peer again for its next piece."""
    rig = Rig(["a", "b"])  # no serving tasks: only what the callbacks send
    rig.ask("a", 0)
    rig.ask("b", 1)
    rig.ask("b", 2)
    assert rig.log == [("a", PIECE)]
    rig.drain("a", BLOCK_SIZE)
    rig.up._wake_granted()  # the look-again timer
    assert rig.log[1:] == [("b", PIECE)]  # b's first piece, from the pass itself
    assert rig.peers["b"] in rig.up._parked  # its second waits the next turn
    rig.drain("a", PIECE)
    rig.drain("b", PIECE)
    rig.up._wake_granted()
    assert rig.log[2:] == [("b", PIECE)]
    assert not rig.up._parked
    assert not rig.peers["b"].upload_wakeup.is_set()  # its task was never needed


async def test_a_peer_seen_drained_is_not_asked_again_until_written_to() -> None:
    rig = Rig(["a", "b", "c"])
    reads: list[str] = []
    for name, peer in rig.peers.items():
        tr = peer.proto.transport
        size = tr.get_write_buffer_size

        def counted(name: str = name, size: Any = size) -> int:
            reads.append(name)
            return int(size())

        tr.get_write_buffer_size = counted
    for i, name in enumerate("abc"):
        rig.ask(name, i)
    rig.serve()
    await rig.settle()
    assert rig.log == [("a", PIECE)]
    assert "b" not in reads and "c" not in reads  # never written to: nothing queued
    rig.drain("a", PIECE)  # a's piece left
    rig.up._wake_granted()
    await rig.settle()
    assert rig.log[1:] == [("b", PIECE)]
    reads.clear()
    rig.drain("b", PIECE)
    rig.up._wake_granted()
    await rig.settle()
    assert rig.log[2:] == [("c", PIECE)]
    assert "a" not in reads  # read once as empty: not asked again


async def test_the_timer_looks_again_once_half_the_budget_has_left() -> None:
    """Not every 5 ms while a waiting peer's room grows a block at a time: the pass
    after a write looks again once half the 64 KiB budget could have left."""
    rig = Rig(["a", "b"])
    rig.swarm.up.add(2_500_000, 0.0)  # 20 mbit measured: 64 KiB budget, 32 KiB half
    rig.ask("a", 0)
    rig.ask("b", 1)
    rig.serve()
    await rig.settle()
    assert rig.log == [("a", PIECE)]  # a's 64 KiB fill the budget; b waits
    rig.up._wake_granted()
    rate = rig.swarm.up.rate(0.0)  # 20 mbit and a's piece
    assert rig.up._turn_due == (PIECE - PIECE + PIECE // 2) / rate  # ~13 ms, not 5
    await rig.close()


async def test_writes_and_new_requests_start_no_grants_pass_of_their_own() -> None:
    """Neither frees room for a waiting peer: only the kernel sending does (the timer's
    look again). A pass after each (~4 a piece at 32 KiB pieces) granted nothing."""
    rig = Rig(["a", "b", "c", "d"])  # no serving tasks: only what the callbacks send
    rig.ask("a", 0)
    rig.ask("b", 1)
    await rig.settle()
    passes = rig.grant_passes
    rig.ask("c", 2)  # c's own grant is computed as it asks: one pass, no second
    await rig.settle()
    assert rig.grant_passes == passes + 1
    assert rig.log == [("a", PIECE)]
    rig.drain("a", PIECE)
    rig.up._wake_granted()  # the timer: b, first in turn, is written
    passes = rig.grant_passes
    await rig.settle()
    assert rig.log[1:] == [("b", PIECE)]
    assert rig.grant_passes == passes  # b's write started none
    await rig.close()


async def test_a_timer_that_ran_late_lets_more_be_written_ahead() -> None:
    """What is written ahead must last until we run again: a host short of CPU runs
    its timer late, and its uplink ran dry (netns lab N=32 on 2 cores)."""
    rig = Rig(["a", "b"])
    rig.swarm.up.add(2_500_000, 0.0)  # 20 mbit measured: a 64 KiB budget
    rig.ask("a", 0)
    rig.ask("b", 1)
    await rig.settle()
    assert rig.log == [("a", PIECE)]  # a's piece fills the budget: b waits
    rig.up._wake_granted()  # on time: still no room
    assert rig.log == [("a", PIECE)]
    rig.up._regrant_at = asyncio.get_running_loop().time() - 0.006
    rig.up._on_timer()  # 6 ms late: ~15 KB more may be ahead
    assert not rig.up._late()  # less than a quarter of a piece's time: still in turns
    assert rig.log[1:] == [("b", PIECE)]  # though a's piece has not left
    await rig.close()


async def test_turns_are_off_while_we_run_later_than_a_piece_takes_to_leave() -> None:
    """A host that wakes later than a quarter of a piece's send time gains nothing by
    turns and pays CPU for them (the netns lab's CPU-starved hosts): every waiting peer
    is written to, and turns come back once the lateness has decayed."""
    rig = Rig(["a", "b", "c"])
    rig.swarm.up.add(2_500_000, 0.0)  # 20 mbit: a 96 KiB piece leaves in ~39 ms
    for i, name in enumerate("abc"):
        rig.ask(name, i)
    await rig.settle()
    assert rig.log == [("a", PIECE)]
    loop = asyncio.get_running_loop()
    rig.up._regrant_at = loop.time() - 0.013
    rig.up._on_timer()  # 13 ms late: a third of the piece's 39 ms, over the quarter
    assert rig.up._late()
    assert sorted(rig.log[1:]) == [("b", PIECE), ("c", PIECE)]
    rig.up.note_late(0.0)  # later reports on time: the maximum decays
    rig.up._lag_at -= 10.0  # as if 10 s had passed (5 half-lives)
    rig.up.note_late(0.0)
    assert not rig.up._late()
    await rig.close()
