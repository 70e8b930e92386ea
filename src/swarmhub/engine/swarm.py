"""One torrent's swarm, sans-IO: events in, actions out, clock and rng injected.

The :class:`Swarm` owns every decision the old asyncio ``Torrent`` mixed with sockets:
what we have, which blocks to ask whom for (:class:`~swarmhub.engine.picker.PiecePicker`),
whom to upload to (:func:`~swarmhub.engine.choker.choose_unchoked`), super-seeding
offers, per-peer state (:class:`~swarmhub.engine.peerstate.PeerState`), request-queue
sizing, strikes and bans, which pieces a web seed should fetch, and when to announce and
whom to dial (:mod:`~swarmhub.engine.schedule`). A driver (the asyncio torrent, or the
lab's virtual-time simulator) reports events — ``connected``, ``message``, ``block``,
``blocks_sent``, ``piece_verified``, ``tick``, ``tracker_response`` … each with ``now`` —
and carries out the :mod:`~swarmhub.engine.actions` it drains with :meth:`Swarm.take`::

    swarm = Swarm(num_pieces, piece_length, total_length, settings, rng=rng, now=clock())
    swarm.connected(peer, addr, peer_id, fast=True, now=clock())
    swarm.message(peer, Unchoke(), now=clock())
    if swarm.block(peer, index, begin, len(data), clock()):
        buffers[index][begin:begin + len(data)] = data   # keep it before acting
    for action in swarm.take():
        match action:
            case Send(peer, messages): ...                # encode with the wire core
            case Verify(index, want_digests): ...         # hash, write, piece_verified()
    swarm.tick(clock())                                  # about once a second

Strikes and bans follow :mod:`~swarmhub.engine.integrity`; on a ban the core also drops
the banned peer's blocks from every unfinished piece, so an honest seeder is never
blamed for a liar's blocks.

No sockets, no tasks, no clock reads, no logging: notices (bans, failures) are actions.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Container, Hashable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

from swarmhub.engine.actions import (
    Action,
    Announce,
    Banned,
    Broadcast,
    Close,
    Completed,
    Connect,
    PieceFailed,
    Send,
    Serve,
    Verify,
)
from swarmhub.engine.allowedfast import grant
from swarmhub.engine.choker import ChokeDecision, ChokerSettings, PeerStats, choose_unchoked
from swarmhub.engine.integrity import Integrity
from swarmhub.engine.peerstate import PeerState, RateMeter
from swarmhub.engine.picker import DICT_POP, Block, BlockTable, PiecePicker
from swarmhub.engine.schedule import Dialer, TrackerSchedule
from swarmhub.engine.superseed import SuperSeeder
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

__all__ = ["BLOCK_SIZE", "TURN_POLL_MAX", "QueuedBytes", "Swarm", "ban_key", "turn_regrant_at"]

BLOCK_SIZE: Final = 16 * 1024
#: In upload turns the grants are looked at again at least this often (s), however much
#: is still written ahead: the kernel drains the peers' send queues without telling us.
#: The asyncio driver (engine/uploads.py) and ``lab simulate`` both follow it.
TURN_POLL_MAX: Final = 0.05


def turn_regrant_at(budget: int, piece_length: int) -> int:
    """In upload turns, the bytes written ahead at which the grants are looked at again:
    the budget less min(half of it, a piece). Why not as soon as there is room: room
    grows a block at a time as the kernel sends, and a pass per block cost the netns
    lab's peers more CPU than the turns gained, while the half left keeps the uplink busy
    (see ``Uploader._grants_now``; ``lab simulate`` follows the same rule)."""
    return budget - min(budget >> 1, piece_length)
_KEEPALIVE = (m.KeepAlive(),)
_INTERESTED = (m.Interested(),)
_NOT_INTERESTED: Final = (m.NotInterested(),)
#: the message types ``receive`` handles, for its exact type checks (Final: a C static,
#: where ``m.Have`` is a module-global and an attribute look-up; a ``match`` there read
#: each ``m.X`` and each keyword field by name, ~270 instructions a look-up, compiled)
_HAVE_T: Final = m.Have
_REQUEST_T: Final = m.Request
_UNCHOKE_T: Final = m.Unchoke
_CHOKE_T: Final = m.Choke
_INTERESTED_T: Final = m.Interested
_NOT_INTERESTED_T: Final = m.NotInterested
_BITFIELD_T: Final = m.Bitfield
_HAVE_ALL_T: Final = m.HaveAll
_HAVE_NONE_T: Final = m.HaveNone
_CANCEL_T: Final = m.Cancel
_REJECT_T: Final = m.RejectRequest
_ALLOWED_FAST_T: Final = m.AllowedFast
_CHOKE = (m.Choke(),)
_UNCHOKE = (m.Unchoke(),)


def _requests(blocks: list[Block]) -> tuple[m.Request, ...]:
    """``Request(*block)`` for each block (a loop, not ``starmap``: the class is compiled
    with its own ``__init__`` (see :mod:`swarmhub.wire.messages`), called natively here)."""
    return tuple([m.Request(index, begin, length) for index, begin, length in blocks])


#: The picker's requester for pieces a web seed fetches (peers leave them alone).
_WEBSEED = "web seed"
#: the least written ahead across all peers under ``upload_ahead``: six blocks, a peer's
#: least request queue (``min_request_queue``, 4) and the next peer's first two. Why
#: more than that queue: the budget is counted in bytes written, headers included, so at
#: four blocks one peer's four (65,588 bytes) held all of it, nobody else was let in
#: until they drained to the look-again point, and the link then carried one connection
#: alone: one whose turn came after an idle spell restarts from TCP's initial window (10
#: segments per round trip, ``tcp_slow_start_after_idle``) and left the uplink idle
#: (``lab simulate`` 256 KiB, 20 mbit, 10 ms: the super-seed 6 % idle in its first copy,
#: mostly so; p2p N=16/64 seed 1 1.202/1.232 -> 1.132/1.198x the bound; 5 blocks, 7 or
#: 8 alike)
_AHEAD_MIN = 6 * 16384
#: A web seed's batch holds about this many seconds of its rate (peers do not help with
#: it, not even in end-game, so a slow web seed must not hold much).
_WS_BATCH_SECONDS = 2.0
#: Seconds without a block from any peer, and without news of a piece we lack (a Have),
#: after which, with leechers around, the web seed may fetch any missing piece (the swarm
#: is stuck, not merely slower than HTTP). Haves count: in a large swarm a client may wait
#: seconds for its first unchoke while pieces spread around it, and the origin's HTTP is
#: shared by every client (lab simulate hybrid N=256: 70 clients without a block after
#: 2 s each fetched 1 MiB from the hub, whose link then served the super-seed a 1/71
#: share, the swarm starved, more clients stalled, and the hub sent 6.7 F).
_PEERS_STALLED = 2.0
#: ... and after this many seconds without a block the news no longer counts: peers that
#: announce pieces but never unchoke us must not keep the web seed off for good.
_PEERS_STARVED = 10.0
#: At most this many bytes per web-seed batch while the swarm can serve (whole-file
#: batches from every client flooded the origin), and the first batch when alone (later
#: ones follow its measured rate, up to the ``web_seed_batch_bytes`` setting).
_SWARM_WS_BATCH_BYTES = 1 << 20
#: Super-seeding: a peer still not interested this many seconds after its latest offer
#: declined it (it downloads only some files). Without the wait, a tick between an offer
#: and the peer's Interested (one RTT later) closed the offer and opened another: at N=64
#: in ``lab simulate`` the seed sent some 20 pieces at once, each at a twentieth of its
#: rate, and the swarm had nothing new to trade for seconds.
_DECLINE_AFTER = 2.0
#: An unchoked peer that asked us for nothing for this many seconds (since its unchoke or
#: its latest request) does not count against the unchoke slots (see _reuse_idle_slots).
_SLOT_IDLE = 0.5
#: Seconds a web seed may go without delivering a piece (or, between batches, without
#: starting the next) and still keep the origin's own peer idle (see webseed_origin).
_WS_STALLED = 1.0
#: While the origin's peer is left idle, a web-seed batch may grow (from its rate) to this
#: many times ``web_seed_batch_bytes``: nothing cuts its ranges short then.
_WS_PREFERRED_GROWTH = 16
#: Alone, a web seed's range requests hold about this many seconds of its measured rate
#: (at least ``web_seed_request_size``): each request costs the origin a lookup and the
#: client a round trip, and nobody cuts a lone downloader's ranges short (64 MiB from a
#: loopback hub: 16 requests of 4 MiB, or one).
_WS_RANGE_SECONDS = 0.5
#: ... but at most this many times the slots (plus the optimistic one) are unchoked at
#: once: idle peers stay unchoked, and without a cap a client with 50 connections
#: unchoked most of them; a new piece then went to all at a fiftieth of the uplink each
#: (lab simulate p2p N=256: 1.60x the bound, 1.51 without the rule).
_SLOT_IDLE_CAP = 2.0
#: Super-seeding: at least this many pieces on offer across all peers. An offer closes when
#: its last block leaves us, and the next one's requests come a round trip after its Have:
#: with two offers open both were often near their end, and the seed idled for that round
#: trip each time (``lab simulate`` p2p N=64, 256 KiB pieces: the seed's uplink 80-90% busy
#: from 5 s on, its first copy out at 15.0 s instead of 14.1 s; 1.29 -> 1.25x the bound).
_SS_MIN_OFFERS = 3
#: Super-seeding, once every piece was offered (the first copy is on its way out): this
#: many offers open at a time. Why: from then on the leechers hold the pieces and trade
#: them; a wider budget only re-sends copies the swarm already has (``lab simulate``
#: p2p N=256, 256 KiB pieces: source 1.22-1.27 F; about 0.2 F of it after the first
#: copy, while the last peers finished).
_SS_TAIL_OFFERS = 1
#: Super-seeding: the offers' turnaround widens the budget by at most this many
#: ``super_seed_window``\ s. Why a cap: an answer may also wait behind our own queue (a
#: Have goes out after the blocks written to that peer before it), and a budget sized on
#: such answers would grow that queue; with the cap it holds at most about this many
#: windows of our rate. Why this many: in the netns lab on a 2-core machine at load 30
#: (hybrid N=32) answers took 0.2-0.4 s on average.
_SS_TURNAROUND_CAP = 4.0
#: Leeching, more unchoke slots (up to twice ``unchoke_slots``) while our measured upload
#: rate sends each of them a piece within this many seconds. Why: a piece can be passed on
#: only once it is whole, so the time it takes to reach a peer is a hop of its way through
#: the swarm; with small pieces four slots leave every hop shorter than the round trips
#: around it, and eight peers fetching at once keep the uplink busy while the newest
#: pieces are requested (``lab simulate`` p2p, 32 KiB pieces, medians of seeds 1-3:
#: N=64 1.20 -> 1.16x the bound; seed 1 N=256 1.23 -> 1.22); with 256 KiB pieces the
#: slots stay four (eight cost N=64 1.25 -> 1.28).
_SLOT_PIECE_TIME = 0.1
#: A peer's request queue holds at least this many of its round trips of its rate.
_RTT_QUEUE: Final = 4.0
#: Seconds taken for a peer's round trip while none was measured (see _lost_interest).
_CHOKE_DUE_RTT: Final = 0.05


def ban_key(addr: tuple[str, int], peer_id: bytes) -> Hashable:
    """Peers are banned by IP, except on loopback where every test peer shares one."""
    if addr[0].startswith("127.") or addr[0] == "::1":
        return (addr[0], peer_id)
    return addr[0]


class QueuedBytes:
    """What the driver wrote to each peer and has not sent yet (:meth:`Swarm.upload_grants`'
    ``queued``), as a class a compiled driver subclasses (``lab simulate``): the core then
    calls it natively and gets a native int; a callable was a Python-level call and a
    boxed int per peer in turn (695 k a run at N=64)."""

    def queued(self, handle: Hashable) -> int:
        raise NotImplementedError


class _CallQueued(QueuedBytes):
    """A plain callable as :class:`QueuedBytes` (the asyncio driver, tests)."""

    def __init__(self, fn: Callable[[Hashable], int]) -> None:
        self.fn = fn

    def queued(self, handle: Hashable) -> int:
        return self.fn(handle)


class Swarm:
    """The swarm state of one torrent; see the module docstring."""

    # Declared here, what a Have, a block and the simulator's check after each event read:
    # compiled, this is the object's field order (mypyc lays attributes out as declared,
    # the class body before ``__init__``). In __init__'s order they sat across a 616-byte
    # object (``_out`` last, ``_ss`` near it, ``picker`` and ``have`` in the middle): at
    # N=1,000 a Have reaches ~35 other hosts' cold Swarms.
    _out: list[Action]
    picker: PiecePicker
    have: bytearray
    num_have: int
    num_pieces: int
    _ss: SuperSeeder | None
    _peer_news_at: float
    active: bool
    peers: dict[Hashable, PeerState]
    _src: dict[int, dict[int, Hashable]]
    _unverified: int
    _max_unverified: int
    downloaded: int
    _peer_block_at: float
    down: RateMeter

    def __init__(
        self,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        settings: Settings,
        *,
        rng: random.Random,
        now: float,
        pad_blocks: Iterable[tuple[int, int]] = (),
        have: bytes | bytearray | None = None,
        peers: Iterable[tuple[str, int]] = (),
        trackers: bool = False,
        info_hash: bytes = b"",
        blocks: BlockTable | None = None,  # the picker's Blocks, shared (lab simulate)
    ) -> None:
        self.num_pieces = num_pieces
        #: the handshake's info hash: BEP 6 allowed-fast sets are computed over it
        self.info_hash = info_hash
        self.piece_length = piece_length
        self.total_length = total_length
        self.settings = settings
        # Settings read per message or per block, kept here (Settings is not compiled:
        # each read is a Python attribute lookup; it is frozen, so they cannot change)
        self._max_unverified = settings.max_unverified_bytes
        self._max_incoming = settings.max_outstanding_incoming_requests
        self._max_incoming_bytes = settings.max_incoming_request_bytes
        self._queue_time = settings.request_queue_time
        self._min_queue = settings.min_request_queue
        self._max_queue = settings.max_request_queue
        self._fast_k = settings.allowed_fast_set_size
        self._upload_ahead = settings.upload_ahead  # (upload_budget: per item sent)
        self._turn_piece_time = settings.upload_turn_piece_time
        self._super_seed = settings.super_seeding  # (_super_seeding: per message)
        self.rng = rng
        pads = list(pad_blocks)
        self.picker = PiecePicker(num_pieces, piece_length, total_length, rng=rng,
                                  pad_blocks=pads,
                                  critical=settings.sequential_critical_pieces,
                                  window=settings.sequential_window_pieces,
                                  blocks=blocks)
        #: bytes of each piece that lie in pad blocks (nobody requests those)
        self._pad_bytes: dict[int, int] = {}
        for index, begin in pads:
            size = min(BLOCK_SIZE, self.piece_size(index) - begin)
            self._pad_bytes[index] = self._pad_bytes.get(index, 0) + size
        self.have = bytearray(num_pieces)
        self.num_have = 0
        if have is not None:
            self.load_have(have)
        self.peers: dict[Hashable, PeerState] = {}
        #: peers in :attr:`peers` we do not choke (kept by _unchoke, _choke_peer and
        #: disconnected: an Interested from a choked peer read it by walking every peer)
        self._unchoked = 0
        self.integrity = Integrity(settings.hash_fail_ban_threshold)
        #: ban keys refused from now on, and strikes (see :mod:`~swarmhub.engine.integrity`)
        self.banned = self.integrity.banned
        self.strikes = self.integrity.strikes
        self.hash_failures = 0
        self.down, self.up, self.webseed_meter = RateMeter(), RateMeter(), RateMeter()
        self.downloaded = self.uploaded = self.webseed_bytes = 0
        #: The interest/choke traffic we sent (issue 9's churn: a swarm in lockstep sent
        #: ten times a calm one's); :meth:`churn` reports it.
        self.interested_sent = self.not_interested_sent = 0
        self.chokes_sent = self.unchokes_sent = self.rejects_sent = 0
        self.allowed_fast_sent = 0  # AllowedFast messages (BEP 6)
        #: seeds the tracker counts (a super-seeding seed shows us only part of what it has)
        self.tracker_seeds = 0
        #: leechers the tracker counts, us included (None until it answers with a count)
        self.tracker_leechers: int | None = None
        #: why the last web seed batch was taken (:meth:`webseed_batch`; for the log)
        self.webseed_why = ""
        #: when the web seed may start at the latest, and when a peer last sent a block or
        #: announced a piece we lack (the swarm moves: see _PEERS_STALLED)
        self._ws_start = now + settings.web_seed_grace
        self._peer_block_at = self._peer_news_at = now
        #: bytes/s the web seed delivered over its last batch (the 5 s meter lags far
        #: behind a loopback origin), and per source when/at what count its batch started
        self._ws_rate = 0.0
        self._ws_batch: dict[str, tuple[float, int]] = {}
        #: IPs of our web seeds' hosts (webseed_origin), the sources with a batch in
        #: flight, when one last showed progress, and when one last ended without failing
        self._ws_origins: frozenset[str] = frozenset()
        self._ws_live: set[str] = set()
        #: the sources whose batch in flight was taken alone (see webseed_cut)
        self._ws_alone: set[str] = set()
        self._ws_seen = self._ws_ok_at = -math.inf
        self._ws_pref: tuple[float, bool] = (math.nan, False)  # (now, answer) cache
        #: Haves for the origin's own peer while it is left idle (webseed_preferred): sent
        #: at the next tick in one message batch (see _passed); not on completion, where
        #: a thousand Haves kept the hub busy while our announces waited for it
        self._held_haves: dict[Hashable, list[int]] = {}
        #: the tracker's latest answer listed only peers at a web seed's host
        self._tracker_origin_only = False
        #: the origin's own peer waits in the dialer, undialled (see _dial): the tracker
        #: counts it as a seed that no connected leecher can be (webseed_alone)
        self._origin_held = False
        self.tracker = TrackerSchedule(now) if trackers else None
        self.dialer = Dialer(peers)
        #: False once the driver stops or fails the torrent: no more requests or dials
        self.active = True
        self._src: dict[int, dict[int, Hashable]] = {}  # unfinished piece -> begin -> key
        self._verifying: dict[int, dict[int, Hashable]] = {}
        self._unverified = 0
        self._choke = ChokeDecision(frozenset(), None, 0.0)
        self._rechoke_at = now
        self._ss: SuperSeeder | None = None
        self._offered_at: dict[Hashable, float] = {}  # super-seeding: latest offer per peer
        #: super-seeding: the best upload rate measured while fresh pieces were left (what
        #: the offer budget is sized on; see :meth:`_offer_round`)
        self._ss_best_rate = 0.0
        #: peers with requests to serve, in turn order (see :meth:`upload_grants`)
        #: (each with its PeerState: upload_grants reads it per peer, a look-up in
        #: :attr:`peers` otherwise; an entry leaves when its peer is disconnected)
        self.upload_order: dict[Hashable, PeerState] = {}
        #: peers out of turns whose last piece may still be leaving: counted in the
        #: budget until the driver reads nothing queued to them
        self._upload_tail: dict[Hashable, None] = {}
        #: upload_budget's latest answer, for the time and the upload meter's total it
        #: was computed at: the driver asks per item that leaves and again for the grants
        #: at the same instant (blocks_sent, the meter's one writer, clears the time)
        self._budget_at = math.nan
        self._budget_total = 0
        self._budget = 0
        #: when _bootstrap_optimistic first gave each peer the optimistic slot
        self._lag_given: dict[Hashable, float] = {}
        self._out: list[Action] = []

    def load_have(self, have: bytes | bytearray) -> None:
        """Pieces we hold already (resume data, a recheck, a seed), before peers come."""
        for i in range(self.num_pieces):
            if have[i] and not self.have[i]:
                self.have[i] = 1
                self.picker.we_have(i)
        self.num_have = sum(self.have)

    # -- the outbox ------------------------------------------------------------------------
    def take(self) -> list[Action]:
        """The actions queued since the last call, in order (the driver carries them out)."""
        out = self._out
        if out:
            self._out = []
        return out

    def _send(self, ps: PeerState, msgs: tuple[m.Message, ...], now: float) -> None:
        if not ps.closed:
            self._out.append(Send(ps.handle, msgs))
            ps.last_send = now

    def _close(self, ps: PeerState, reason: str) -> None:
        if not ps.closed:
            ps.closed = True
            self._note_seed(ps)
            self._out.append(Close(ps.handle, reason))

    def _note_seed(self, ps: PeerState) -> None:
        """A connection ends: if the peer held every piece or said it wants nothing
        (``upload_only``), the dialer remembers its listen address, which it then leaves
        undialled while we are a seed too."""
        addr = ps.listen_addr
        if addr is not None and (ps.upload_only or ps.is_seed):
            self.dialer.seed(addr)

    # -- state -----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Every piece verified: we are a seed."""
        return self.num_have == self.num_pieces

    @property
    def finished(self) -> bool:
        """Every wanted piece verified (all of them unless files were deselected)."""
        return self.picker.is_finished

    @property
    def downloading(self) -> bool:
        return self.active and not self.picker.is_finished

    def set_piece_priorities(self, priorities: Iterable[int], now: float) -> None:
        """New piece priorities (0 skip, 1 normal, up to 7 sooner; see
        :mod:`~swarmhub.engine.selection` for files -> pieces). Interest follows at once;
        :class:`Completed` is queued when this finishes the download (nothing left that
        is wanted). Going from finished back to downloading queues nothing: the driver
        compares :attr:`finished` before and after."""
        was = self.finished
        self.picker.set_priorities(priorities)
        self._priorities_changed(was, now)

    def set_piece_priority(self, index: int, priority: int, now: float) -> None:
        """One piece's priority (a streaming reader's seek boosts the pieces it needs)."""
        was = self.finished
        self.picker.set_piece_priority(index, priority)
        self._priorities_changed(was, now)

    def set_sequential(self, on: bool) -> None:
        """Windowed in-order picking (streaming) on or off."""
        self.picker.set_sequential(on)

    def _priorities_changed(self, was_finished: bool, now: float) -> None:
        if not self.active:
            return
        for ps in list(self.peers.values()):
            self._update_interest(ps, now)
        self._fill_all(now)
        if self.finished and not was_finished:
            self._set_complete(now)

    def piece_size(self, index: int) -> int:
        return min(self.piece_length, self.total_length - index * self.piece_length)

    def bytes_have(self) -> int:
        if self.complete:
            return self.total_length
        return sum(self.piece_size(i) for i in range(self.num_pieces) if self.have[i])

    def peer(self, handle: Hashable) -> PeerState:
        return self.peers[handle]

    def stall_reason(self) -> str | None:
        """Why a download is not moving, in words for the user (None when finished)."""
        if self.finished:
            return None
        if self.banned and not self.peers:
            return (f"every peer that sent data was banned ({len(self.banned)} banned, "
                    f"{self.hash_failures} pieces failed their hash check)")
        if self.peers:
            if not any(ps.unchoked_us for ps in self.peers.values()):
                return f"{len(self.peers)} peers connected, but none ever unchoked us"
            if not any(self.picker.interesting(h) for h in self.peers):
                return f"{len(self.peers)} peers connected, but none has a piece we lack"
            return None
        error = self.tracker.last_error if self.tracker is not None else None
        return "no peers connected" + (f" (tracker: {error})" if error else "")

    # -- peers come and go -----------------------------------------------------------------
    def can_accept(self, addr: tuple[str, int], peer_id: bytes, now: float, *,
                   outgoing: bool | None = None, local_id: bytes = b"") -> str | None:
        """Why a new peer cannot join (None: it can). At the per-torrent cap, the least
        useful idle peer (no interest and no data either way for ``peer_idle_evict``
        seconds) is closed to make room, so idle peers cannot lock everyone out.

        Two peers that dial each other at once (the hub's seeder dials every announcer
        while the announcer dials it; PEX) would each refuse the second connection and
        close the first on the other's refusal, ending with none: given the direction
        (``outgoing``) and our ``local_id``, both ends keep the connection the lower peer
        id opened, as libtorrent does, whatever order the handshakes finish in."""
        if not self.active:
            return "torrent is not active"
        if ban_key(addr, peer_id) in self.banned:
            return "peer is banned"
        # One walk for the duplicates and the live count (a handshake storm calls this
        # for every connection attempt: at N=3,000 it was a quarter of the first 0.5 s).
        dups: list[PeerState] = []
        live = 0
        for ps in self.peers.values():
            if not ps.closed:
                live += 1
                if ps.peer_id == peer_id:
                    dups.append(ps)
        if dups:
            if outgoing:
                # The address we dialled is this peer's (it dialled us and sent no BEP 10
                # ``p``, or listens on more than one): while it stays connected, do not
                # dial it again at each announce.
                for ps in dups:
                    ps.listen_addr = addr
            if outgoing is None or all(ps.outgoing == outgoing for ps in dups):
                return "already connected to this peer"
            if (local_id < peer_id) != outgoing:
                return "already connected to this peer (the lower peer id opened that one)"
            for ps in dups:
                self._close(ps, "duplicate connection: keeping the one the lower peer id opened")
            live -= len(dups)  # closed now
        if live >= self.settings.max_connections_per_torrent:
            limit = now - self.settings.peer_idle_evict
            idle = [ps for ps in self.peers.values()
                    if not ps.closed and not ps.peer_interested and not ps.am_interested
                    and ps.last_data <= limit]
            if not idle:
                return "too many connections for this torrent"
            victim = min(idle, key=lambda ps: ps.last_data)
            self._close(victim, "evicted: idle, and a new peer needed the slot")
        return None

    def connected(self, handle: Hashable, addr: tuple[str, int], peer_id: bytes, *,
                  fast: bool, now: float, outgoing: bool = False) -> PeerState:
        """A handshake completed (the driver sent its extension handshake already)."""
        s = self.settings
        ps = PeerState(handle, addr, peer_id, ban_key(addr, peer_id), self.num_pieces,
                       fast=fast, now=now, queue_target=s.min_request_queue,
                       outgoing=outgoing)
        old = self.peers.get(handle)
        if old is not None and not old.am_choking:
            self._unchoked -= 1  # (a driver reusing a handle: not ours, but kept exact)
        self.peers[handle] = ps
        if self._super_seeding():
            assert self._ss is not None
            self._ss.add_peer(handle)
            if fast:  # else say nothing: an empty Bitfield may be left out (BEP 3)
                self._send(ps, (m.HaveNone(),), now)
            self._offer(ps, now)
        elif self.complete and fast:
            self._send(ps, (m.HaveAll(),), now)
        elif self.num_have == 0 and fast:
            self._send(ps, (m.HaveNone(),), now)
        elif self.num_have:
            self._send(ps, (m.Bitfield(m.bitfield_from_bools(self.have)),), now)
        return ps

    def disconnected(self, handle: Hashable, now: float) -> None:
        ps = self.peers.pop(handle, None)
        if ps is None:
            return
        if not ps.closed:  # (closed by us: noted then)
            self._note_seed(ps)
        ps.closed = True
        if not ps.am_choking:
            self._unchoked -= 1
        self._lag_given.pop(handle, None)
        self._held_haves.pop(handle, None)
        self.picker.peer_gone(handle)
        if self._ss is not None:
            self._ss.remove_peer(handle)  # its open offers go to the others
            self._offered_at.pop(handle, None)
            self._offer_round(now)
        ps.requested.clear()
        ps.incoming.clear()
        self.upload_order.pop(handle, None)
        self._upload_tail.pop(handle, None)
        self._fill_all(now)

    def extension_handshake(self, handle: Hashable, *, reqq: int | None = None,
                            listen_port: int | None = None, upload_only: bool = False) -> None:
        """The peer's BEP 10 handshake: how many requests it queues (``reqq``), and the
        port it listens on (``p``). A peer that dialled us is known by its ephemeral
        source port; without ``p`` each tracker answer or PEX message that lists its
        listening address had us dial it again and drop the duplicate (at N=32 in the
        netns lab ~15 connections per peer pair and run, each an encrypted handshake
        with MSE on: ~0.6 CPU-s per peer). An address we dialled stays what it is."""
        ps = self.peers.get(handle)
        if ps is None:
            return
        if reqq:
            ps.reqq = max(2, reqq)
        if listen_port and not ps.outgoing:  # the wire decoder drops one outside 1..65535
            ps.listen_addr = (ps.addr[0], listen_port)
        if upload_only:
            # BEP 21: it wants nothing (a seed, libtorrent's too): its address is a seed's
            # for the dialer once it goes (_note_seed), and two such ends have nothing
            # to trade.
            ps.upload_only = True
            if self.complete:
                self._close(ps, "both sides are seeds")

    # -- messages --------------------------------------------------------------------------
    def message(self, handle: Hashable, msg: m.Message, now: float) -> None:
        """Any message but Piece (see :meth:`block`), already checked by the wire core."""
        ps = self.peers.get(handle)
        if ps is not None:
            self.receive(ps, msg, now)

    def receive(self, ps: PeerState, msg: m.Message, now: float) -> None:
        """:meth:`message` from the peer whose state :meth:`connected` returned, until
        :meth:`disconnected` (a driver that keeps it skips the lookup by handle: the
        simulator, for every message of the run)."""
        if ps.closed:
            return
        ps.last_recv = now
        # Have and Request are most of a swarm's messages: checked first.
        kind = type(msg)
        if kind is _HAVE_T:
            self._got_have(ps, cast(m.Have, msg).index, now)
            return
        if kind is _REQUEST_T:
            self._on_request(ps, cast(m.Request, msg), now)
            return
        # The rest by exact type too (the codec's messages are not subclassed; compiled,
        # they cannot be): KeepAlive, Port, Suggest and Extended are the driver's.
        handle = ps.handle
        if kind is _UNCHOKE_T:
            ps.peer_choking = False
            ps.unchoked_us = True
            ps.queue_target = self._queue_target(ps, now)
            self._update_interest(ps, now)  # wanting nothing now: hand the slot back
            self._fill(ps, now)
        elif kind is _CHOKE_T:
            ps.peer_choking = True
            ps.choke_due_until = -math.inf
            if not ps.fast:  # BEP 3: a choke discards every pending request
                for block in ps.requested:
                    self.picker.request_failed(handle, block)
                ps.requested.clear()
                self._fill_all(now)
        elif kind is _INTERESTED_T or kind is _NOT_INTERESTED_T:
            ps.peer_interested = kind is _INTERESTED_T
            if ps.allowed_out is None and ps.peer_interested:
                self._grant_allowed(ps, now)
            if not ps.peer_interested:
                if not ps.am_choking:
                    self._hand_over_slot(ps, now)
            elif ps.am_choking:
                # A free slot, or a free optimistic slot, is filled at once: the first
                # rounds run as the first peers show interest, when every peer is a
                # regular (the optimistic slot stayed empty until the 10 s round).
                unchoked = self._unchoked
                slots = self._slots(now)
                if unchoked < slots or (unchoked == slots
                                        and self._choke.optimistic is None):
                    self._rechoke(now)
        elif kind is _BITFIELD_T:
            # OR, not replace: a late Bitfield (aria2) must not forget Have messages.
            n = self.num_pieces
            theirs = bytes(m.bools_from_bitfield(cast(m.Bitfield, msg).bits, n))
            merged = int.from_bytes(ps.have, "big") | int.from_bytes(theirs, "big")
            bits = merged.to_bytes(n, "big")
            self._picker_bitfield(ps, bits)  # (first: the picker's record is ps.have)
            ps.have[:] = bits  # (the picker wrote it, unless it took the peer for a seed)
            ps.num_have = n - ps.have.count(0)
            self._on_bitfield(ps, now)
        elif kind is _HAVE_ALL_T:
            ps.has_all = True
            self._picker_bitfield(ps, ps.have)
            ps.have[:] = b"\x01" * self.num_pieces
            ps.num_have = self.num_pieces
            self._on_bitfield(ps, now)
        elif kind is _HAVE_NONE_T:
            self._picker_bitfield(ps, ps.have)
            self._on_bitfield(ps, now)
        elif kind is _CANCEL_T:
            c = cast(m.Cancel, msg)
            with contextlib.suppress(ValueError):
                ps.incoming.remove(m.Request(c.index, c.begin, c.length))
        elif kind is _REJECT_T:
            r = cast(m.RejectRequest, msg)
            index = r.index
            block = Block(index, r.begin, r.length)
            if ps.requested.pop(block, None) is not None:
                self.picker.request_failed(handle, block)
                if ps.peer_choking and ps.allowed_in:
                    ps.allowed_in.discard(index)  # not honoured: ask no more (BEP 6)
        elif kind is _ALLOWED_FAST_T:
            index = cast(m.AllowedFast, msg).index
            if ps.fast and 0 <= index < self.num_pieces and not self.have[index]:
                if ps.allowed_in is None:
                    ps.allowed_in = set()
                ps.allowed_in.add(index)
                if ps.peer_choking:
                    self._update_interest(ps, now)
                    self._fill(ps, now)

    def _picker_bitfield(self, ps: PeerState, bits: bytes | bytearray) -> None:
        """Tell the picker ``ps``'s pieces are ``bits`` (a Bitfield, HaveAll or HaveNone),
        before ``ps.have`` changes: the picker keeps ``ps.have`` as its own record of the
        peer (see :meth:`PiecePicker.peer_has`), and counts what is new against it."""
        if ps.has_all:
            self.picker.peer_has_all(ps.handle)
        else:
            self.picker.peer_has_bitfield(ps.handle, bits, ps.have)

    def _on_bitfield(self, ps: PeerState, now: float) -> None:
        if ps.is_seed and self.complete:
            self._close(ps, "both sides are seeds")
            return
        if self._ss is not None and ps.handle in self._ss:
            self._offer(ps, now)  # drops offers of pieces it turned out to have
        self._update_interest(ps, now)

    def haves(self, handle: Hashable, indices: list[int], now: float) -> None:
        """A run of Haves from one peer: :meth:`message` for each, in one call (the
        driver's receive fast path; most of a swarm's messages), with one interest check
        and request refill for the whole run, after its last Have.

        Why once: each Have of a piece we lack refilled the peer's request queue, a pick
        whenever the queue had room, so the first Have of a run took the queue's room
        before the pick could see the run's other pieces (a lab peer gets its Haves in
        runs of ~4: N=32, ~25,000 Haves in ~5,800 runs per peer and 32 MiB)."""
        ps = self._heard(handle, now)
        if ps is None:
            return
        news = False
        for index in indices:
            news = self._got_have(ps, index, now, False) or news
            if ps.closed:
                return
        if news:
            self._wants_more(ps, now)

    def requests(self, handle: Hashable, reqs: Sequence[m.Request], now: float) -> None:
        """A run of Requests from one peer: :meth:`message` for each, in one call (a
        seeder's receive fast path: one Request per 16 KiB block it sends). Each may
        queue one reply, a RejectRequest."""
        ps = self._heard(handle, now)
        if ps is not None:
            for req in reqs:
                self._on_request(ps, req, now)

    def _heard(self, handle: Hashable, now: float) -> PeerState | None:
        """The open peer a run of messages came from, its last_recv now (the run fast
        paths' shared start); None if it is gone or closed."""
        ps = self.peers.get(handle)
        if ps is None or ps.closed:
            return None
        ps.last_recv = now
        return ps

    def have_from(self, ps: PeerState, index: int, now: float) -> None:
        """:meth:`receive` of ``Have(index)`` (a driver that broadcast one Have to many
        peers reads its index once: the simulator, for every Have of the run)."""
        if not ps.closed:
            ps.last_recv = now
            self._got_have(ps, index, now)

    def _got_have(self, ps: PeerState, index: int, now: float, refill: bool = True) -> bool:
        """A Have of ``index`` from ``ps``: True if it is news and we lack the piece (see
        :meth:`_on_have`)."""
        if ps.have[index]:
            return False
        ps.num_have += 1
        # the picker sets ps.have[index]: its record of the peer is ps.have (one bitfield
        # per connection, see PiecePicker.peer_has; a seed's is all ones already)
        self.picker.peer_has(ps.handle, index, ps.have)
        return self._on_have(ps, index, now, refill)

    def _on_have(self, ps: PeerState, index: int, now: float, refill: bool = True) -> bool:
        """``ps`` got piece ``index`` (the picker told): True if we lack it (then
        :meth:`_wants_more`, unless ``refill`` is False: :meth:`haves` does that once per
        run)."""
        if self.num_have == self.num_pieces and ps.is_seed:  # per Have: no property first
            self._close(ps, "both sides are seeds")
            return False
        if self._ss is not None and self._ss.peer_has(ps.handle, index):
            self._offer(ps, now)
        if self.have[index]:
            return False
        self._peer_news_at = now
        if refill:
            self._wants_more(ps, now)
        return True

    def _wants_more(self, ps: PeerState, now: float) -> None:
        """``ps`` has a piece we lack: ask it for blocks, or tell it we are interested."""
        if ps.am_interested:
            self._fill(ps, now)  # something new to ask for: no wait for the tick
        else:
            self._update_interest(ps, now)

    def _update_interest(self, ps: PeerState, now: float) -> None:
        want = self.downloading and self.picker.interesting(ps.handle)
        if want and not ps.am_interested:
            ps.am_interested = True
            self.interested_sent += 1
            self._send(ps, _INTERESTED, now)
            self._fill(ps, now)
        elif not want and ps.am_interested:
            self._lost_interest(ps, now)

    def _lost_interest(self, ps: PeerState, now: float) -> None:
        """Tell ``ps`` NotInterested. One that unchokes us chokes us in return (we do, so
        does libtorrent), and its Have sent meanwhile would make us ask it for blocks it
        then rejects: no requests to it until its Choke came, or for two round trips.
        (``lab simulate`` p2p N=64: 0.78 RejectRequest per client per piece, nearly all
        requests that crossed such a Choke.)"""
        ps.am_interested = False
        self.not_interested_sent += 1
        if not ps.peer_choking:
            rtt = ps.min_delay if ps.min_delay < math.inf else _CHOKE_DUE_RTT
            ps.choke_due_until = now + 2 * rtt
        self._send(ps, _NOT_INTERESTED, now)

    # -- downloading -----------------------------------------------------------------------
    def _queue_target(self, ps: PeerState, now: float) -> int:
        """Requests to keep outstanding to ``ps``: ``request_queue_time`` of its measured
        rate, or ``_RTT_QUEUE`` round trips when longer.

        Why short: the peer serves our requests in order, so a new (rare) piece we ask
        for waits behind the whole queue; every hop it takes through the swarm costs the
        queue time, and the pieces we hold requested are pieces nobody else can send us
        meanwhile (``lab simulate`` p2p N=64 with 2 s: a block came 0.24 s after its
        request, 0.9 s at p90, 24 pieces in progress per leecher, uplinks idle 12% of
        the time; with 0.25 s: 0.17/0.26 s, 13 pieces, 1.26 -> 1.22x the bound). Why the
        round-trip floor: a queue shorter than a round trip caps the rate it measures,
        and the next target shrinks with it, down to ``min_request_queue``."""
        qtime = self._queue_time
        if ps.min_delay < math.inf:
            qtime = max(qtime, _RTT_QUEUE * ps.min_delay)
        target = int(ps.down.rate(now) * qtime / BLOCK_SIZE)
        target = max(self._min_queue, min(self._max_queue, target))
        return max(1, min(target, ps.reqq - 1))

    def _fill(self, ps: PeerState, now: float) -> None:
        """Top the peer's request queue up to its target, in batches (fewer writes); from
        a peer that chokes us, blocks of the pieces it allows us (BEP 6 Allowed Fast)."""
        if ps.closed or not ps.am_interested or not self.downloading \
                or now < ps.choke_due_until:
            return
        if ps.peer_choking:
            if ps.allowed_in:
                self._fill_allowed(ps, now)
            return
        if self._ws_origins and ps.addr[0] in self._ws_origins and self.webseed_preferred(now):
            return  # the origin's peer and its web seed share an uplink: HTTP only
        target = ps.queue_target
        want = target - len(ps.requested)
        if want <= 0 or (ps.requested and want < max(1, target // 8)):
            return
        if self._unverified > self._max_unverified:
            return  # hashing/disk is behind: let it catch up (bounded memory)
        blocks = self.picker.pick(ps.handle, want)
        if not blocks:
            return
        self._ask(ps, blocks, now)

    def _ask(self, ps: PeerState, blocks: list[Block], now: float) -> None:
        """Record ``blocks`` as requested from ``ps`` now and send the Requests (both
        fill paths)."""
        requested = ps.requested
        for block in blocks:  # (not update(dict.fromkeys()): two dicts and a call by name)
            requested[block] = now
        self._send(ps, _requests(blocks), now)

    def _fill_allowed(self, ps: PeerState, now: float) -> None:
        """:meth:`_fill` from a peer that chokes us: its allowed-fast pieces only, at the
        normal queue depth; pieces we have leave the set."""
        allowed = ps.allowed_in
        assert allowed is not None
        have = self.have
        for index in [i for i in allowed if have[i]]:
            allowed.discard(index)
        want = ps.queue_target - len(ps.requested)
        if want <= 0 or not allowed or self._unverified > self._max_unverified:
            return
        blocks = self.picker.pick_allowed(ps.handle, want, allowed)
        if blocks:
            self._ask(ps, blocks, now)

    def _fill_all(self, now: float) -> None:
        for ps in list(self.peers.values()):
            self._fill(ps, now)

    def block(self, handle: Hashable, index: int, begin: int, length: int,
              now: float) -> bool:
        """One Piece message arrived: :meth:`blocks_received` for one."""
        return self.blocks_received(handle, (Block(index, begin, length),), now)[0]

    def blocks_received(self, handle: Hashable, got: Iterable[Block],
                        now: float) -> list[bool]:
        """Piece messages arrived from one peer, as (index, begin, length) in wire order
        (the hot path: ~15,000 blocks a second at 250 MB/s, handed over per read, so the
        per-peer work — rate meters, pipeline size, the refill — runs once per batch, not
        per block). For each, True if the driver should store its data (before carrying
        out the queued actions: one may be the piece's :class:`Verify`)."""
        ps = self.peers.get(handle)
        if ps is None:
            return [False for _ in got]
        return self.blocks_from(ps, got, now)

    def blocks_from(self, ps: PeerState, got: Iterable[Block], now: float) -> list[bool]:
        """:meth:`blocks_received` from the peer whose state :meth:`connected` returned,
        until :meth:`disconnected` (see :meth:`receive`)."""
        handle = ps.handle
        ps.last_recv = ps.last_data = now
        requested = ps.requested
        have = self.have
        srcs = self._src
        key = ps.key
        out: list[bool] = []
        kept: list[Block] = []  # for the picker, in one call
        nbytes = 0
        latest = -math.inf  # when the newest of these blocks was asked for
        at = -1  # the piece of the previous block kept, and its sources (``src``)
        src: dict[int, Hashable] = {}
        for block in got:
            asked = DICT_POP(requested, block, None)
            if asked is None:
                out.append(False)  # unrequested, cancelled or late duplicate: drop it
                continue
            if asked > latest:
                latest = asked
            index, begin, length = block
            nbytes += length
            if index != at:
                if have[index]:
                    out.append(False)
                    continue
                at = index
                known = srcs.get(index)
                if known is None:
                    known = srcs[index] = {}
                src = known
            src[begin] = key
            kept.append(block)
            out.append(True)
        if kept:
            for block, result in self.picker.blocks_received(handle, kept):
                if result.cancel_peers:
                    self._cancel_others(result.cancel_peers, block, now)
                if result.piece_complete:
                    index = block[0]
                    self._verifying[index] = srcs.pop(index)
                    self._unverified += self.piece_size(index)
                    self._out.append(Verify(index, self.integrity.wants_digests(index)))
        if nbytes:
            if now - latest < ps.min_delay:
                ps.min_delay = now - latest
            ps.down.add(nbytes, now)
            self.down.add(nbytes, now)
            self.downloaded += nbytes
            self._peer_block_at = now
            ps.snubbed = False
            if now - ps.target_at > 0.25:  # adapt the pipeline to the measured rate
                ps.target_at = now
                ps.queue_target = self._queue_target(ps, now)
            self._fill(ps, now)
        return out

    def _cancel_others(self, others: Iterable[Hashable], block: Block, now: float) -> None:
        """End-game: ``block`` came; the other peers asked for it get a Cancel."""
        for other in others:
            ops = self.peers.get(other)
            if ops is not None and ops.requested.pop(block, None) is not None:
                self._send(ops, (m.Cancel(*block),), now)

    def piece_verified(self, index: int, ok: bool, now: float,
                       digests: Mapping[int, bytes] | None = None) -> None:
        """The driver hashed piece ``index`` (and wrote it when ``ok``). ``digests``: the
        SHA-1 of each block by offset, when :class:`Verify` asked for them or it failed."""
        sources = self._verifying.pop(index, {})
        was_behind = self._unverified > self._max_unverified
        self._unverified -= self.piece_size(index)
        if self.have[index]:
            pass  # a web seed finished it meanwhile: nothing to learn from this copy
        elif ok:
            for key in self.integrity.passed(index, digests):  # who sent the bad blocks?
                self._ban(key, f"sent corrupt data for piece {index}", now)
            self._passed(index, now)
        else:
            self.hash_failures += 1
            self.picker.piece_failed(index)
            self._out.append(PieceFailed(index, len(set(sources.values()))))
            verdict = self.integrity.failed(index, sources, digests)
            if verdict is not None:
                self._ban(*verdict, now)
            self._fill_all(now)
        if was_behind and self._unverified <= self._max_unverified:
            self._fill_all(now)

    def _ban(self, key: Hashable, why: str, now: float) -> None:
        """Ban ``key``: close its connections and drop its blocks from unfinished pieces
        (they would fail those pieces and blame the peers that sent the rest)."""
        if not self.integrity.ban(key):
            return
        self._out.append(Banned(key, why))
        for ps in list(self.peers.values()):
            if ps.key == key:
                self._close(ps, f"banned: {why}")
        for index, src in list(self._src.items()):
            mine = [b for b, k in src.items() if k == key]
            if mine:
                for b in mine:
                    del src[b]
                self.picker.forget_blocks(index, mine)
                if not src:
                    del self._src[index]
        self._fill_all(now)

    def webseed_piece(self, index: int, nbytes: int, now: float) -> None:
        """A web seed delivered piece ``index`` and the driver verified and wrote it.
        Peers still asked for its blocks are told to cancel them."""
        self._cancel_requests(index, now)
        self.webseed_bytes += nbytes
        self._ws_seen = now
        self.downloaded += nbytes
        self.down.add(nbytes, now)
        self.webseed_meter.add(nbytes, now)
        self._passed(index, now)

    def _passed(self, index: int, now: float) -> None:
        if self.have[index]:
            return
        self._src.pop(index, None)  # a web seed may finish a piece peers were sending
        self.have[index] = 1
        self.num_have += 1
        self.picker.piece_passed(index)
        told = self._tell_passed(index, now)
        if told and self._ws_origins and self.webseed_preferred(now):
            # The origin's peer, left idle while its web seed serves us, gets its Haves at
            # the next tick: a write per run of pieces woke the hub (on loopback the woken
            # hub took the CPU from us each time: ~60 ms of a 64 MiB fetch). A `get` that
            # ends before then never sends them: that peer is a seed, it needs none.
            origins = self._ws_origins
            held = self._held_haves
            for ps in told:
                if ps.addr[0] in origins:
                    held.setdefault(ps.handle, []).append(index)
            told = [ps for ps in told if ps.addr[0] not in origins]
        if told:
            for ps in told:
                ps.last_send = now
            self._out.append(Broadcast(tuple([ps.handle for ps in told]), (m.Have(index),)))
        if self.picker.is_finished:
            self._set_complete(now)

    def _tell_passed(self, index: int, now: float) -> list[PeerState]:
        """We passed piece ``index``: the peers to tell (a Have, the caller sends it), and
        NotInterested to those it was the last piece we wanted from. One walk of the
        peers for both (this runs for every piece x peer; two walks were ~1 % of a
        ``lab simulate`` run), and each peer's bit read at most once (a bytearray read is
        a generic call compiled: the flags are read first).

        Told: peers that lack it, and peers that hold it but want nothing from us and are
        no seed: a super-seed shows its pieces one Have at a time and keeps each offer
        open until it is served or the peer reports the piece, so a Have withheld because
        "it has it" held the offer (in the tail the seed's only one) until the 2 s
        decline rule (netns lab N=16: every peer waited ~3 s for the last pieces).

        NotInterested: the piece was the last one we wanted from some peers that have
        it: tell them now, not at the next tick.

        Why: an uploader keeps an interested peer in its unchoke slot, so a peer that
        wants nothing more from it held one of its few slots for up to a tick (a second)
        while others waited. In a swarm fed by one seed the peers must upload (N-1)/N of
        what it sends, so an idle uplink is never made up (``lab simulate`` p2p N=64
        mid-run: 6.5 % of the clients' time their uplink idled with an unchoked
        "interested" peer that had every piece they could give it). Its NotInterested
        hands the slot over at once (:meth:`_hand_over_slot`). ``lab simulate`` 256 KiB
        pieces, seeds 1-3, p2p / hybrid: N=16 1.16-1.17 -> 1.14-1.15x the bound, N=64
        1.25-1.27 -> 1.21-1.22, N=256 1.32-1.33 -> 1.27-1.28.

        Peers that choke us are not told (the tick does, if they still have nothing for
        us; an Unchoke from one is answered at once, see :meth:`receive`): we hold no
        slot of theirs, and in a swarm moving in lockstep their next Have, a round trip
        or two later, made us Interested again. Told at once, 2.4 of 3.3 NotInterested
        per client per piece went to peers choking us, each paired with an Interested
        (``lab simulate`` p2p N=64 seed 1; issue 9's churn in the netns lab)."""
        picker = self.picker  # (picker.interesting a native call: not a bound method)
        told: list[PeerState] = []
        for ps in self.peers.values():
            if ps.closed:
                continue
            has = -1  # ps.have[index], once read
            if ps.peer_interested or ps.is_seed:
                has = ps.have[index]
                if not has:
                    told.append(ps)
            else:
                told.append(ps)
            if ps.am_interested and not ps.peer_choking:
                if has < 0:
                    has = ps.have[index]
                if has and not picker.interesting(ps.handle):
                    self._lost_interest(ps, now)
        return told

    def _set_complete(self, now: float) -> None:
        """Every wanted piece is in: lose interest; seeds are closed (and the tracker
        told ``completed``) only when we hold every piece ourselves."""
        complete = self.complete
        for ps in list(self.peers.values()):
            if complete and (ps.is_seed or ps.upload_only):
                self._close(ps, "both sides are seeds")
            elif ps.am_interested:
                self._lost_interest(ps, now)
        if self.tracker is not None and self.downloaded and complete:
            self._out.append(Announce("completed"))
        self._out.append(Completed())

    def _send_held_haves(self, now: float) -> None:
        """The Haves held back for the origin's peer (see :meth:`_passed`), in one batch."""
        held, self._held_haves = self._held_haves, {}
        for handle, pieces in held.items():
            ps = self.peers.get(handle)
            if ps is not None:
                self._send(ps, tuple(m.Have(i) for i in pieces), now)

    def webseed_alone(self) -> bool:
        """Nobody to trade with: no other leecher in the tracker's count (when it gave one)
        and no connected leecher beyond the seeds the tracker counts (a super-seeding seed,
        like the hub's own peer, hides its pieces and looks like a leecher). Then the web
        seed is a source like any other and runs at full speed: nothing the peers could
        later spare it, and a one-downloader hub fetch must not wait on the hub's peer."""
        if self.tracker_leechers is not None and self.tracker_leechers > 1:
            return False  # the tracker counts us as a leecher too
        leechers = sum(1 for ps in self.peers.values() if not ps.is_seed and not ps.closed)
        # The origin's peer, held back undialled, hides among no connected leecher: one
        # that connects to us is someone to trade with (the hub's peer, connected, made
        # two leechers for the tracker's one seed).
        seeds = self.tracker_seeds
        return leechers <= (seeds - 1 if self._origin_held and seeds > 0 else seeds)

    def webseed_ready(self, now: float) -> bool:
        """The web seed may start: the grace for peers is over, or the tracker already
        answered and we are alone (no reason to wait for peers that are not coming)."""
        if now >= self._ws_start:
            return True
        return self.tracker_leechers is not None and self.webseed_alone()

    def webseed_origin_only(self, now: float) -> bool:
        """The web seed may start at once (:meth:`webseed_ready`), and the tracker listed
        only the origin's own peer(s): no other peer to wait for, so a driver need not
        give other leechers' first connections time to arrive before its first batch
        (see ``WebSeedDriver.loop``)."""
        return self._tracker_origin_only and self.webseed_ready(now)

    def webseed_origin(self, hosts: Iterable[str], now: float | None = None) -> None:
        """IPs of a web seed's host (the driver resolves its URL). A peer at one of them is
        taken for the origin's own seeder (the hub's): see :meth:`webseed_preferred`.
        ``now``: the web seed is about to start, and counts as healthy for
        ``_WS_STALLED`` seconds before its first batch (the hub's peer, dialled at the
        tracker's answer, was otherwise asked for the first pieces in the ~20 ms before
        it, which then cut the web seed's ranges short)."""
        self._ws_origins = self._ws_origins | frozenset(hosts)
        if now is not None:
            self._ws_ok_at = max(self._ws_ok_at, now)
            self._ws_pref = (math.nan, False)

    def webseed_preferred(self, now: float) -> bool:
        """Leave the origin's own peer idle and fetch over HTTP only: we are alone
        (:meth:`webseed_alone`) and the web seed is healthy (its batch delivered within
        ``_WS_STALLED`` seconds, or its last batch ended without failing that recently).
        Alone, the hub's peer and its web seed share one uplink: splitting between them
        gains nothing, and the peer's pieces (scattered: super-seeding) cut the web seed's
        ranges short at about twice the CPU per byte. With another leecher, a failed or a
        stalled web seed, the peer is asked again (at once, or at the next tick)."""
        if not self._ws_origins:
            return False
        at, answer = self._ws_pref
        if at == now:  # _fill asks once per block received: one scan of the peers per now
            return answer
        if self._ws_live:
            healthy = now - self._ws_seen < _WS_STALLED
        else:
            healthy = now - self._ws_ok_at < _WS_STALLED
        answer = healthy and self.downloading and self.webseed_alone()
        self._ws_pref = (now, answer)
        return answer

    def webseed_batch(self, now: float, reserved: Container[int], *,
                      source: str = "") -> list[int]:
        """Pieces for a web seed, as runs of adjacent pieces (few large HTTP requests).

        Alone (:meth:`webseed_alone`): the first missing pieces, about
        ``_WS_BATCH_SECONDS`` of its rate (at least 1 MiB, at most
        ``web_seed_batch_bytes``), adjacent or not (the peers leave gaps, not runs), as
        BEP 19 clients and aria2 use an HTTP source next to peers. With leechers around
        the swarm serves and the web seed only helps, so that the origin's share falls as
        the swarm grows: it fills what no connected peer has (unless a tracker-counted
        seed may be hiding it: a super-seed hands every piece out in turn, and clients
        would all fetch over HTTP the pieces it has not offered yet), or, when no peer has
        sent a block nor announced a piece we lack for ``_PEERS_STALLED`` seconds (the
        swarm is stuck, not merely busy) or without a block for ``_PEERS_STARVED``
        seconds, any missing piece; in both cases a
        small batch from a random starting point, so that clients spread over the file
        instead of all fetching the same first pieces from the origin.

        The batch is reserved in the picker for ``source`` (peers pick other pieces, even
        in end-game) until :meth:`webseed_release`."""
        if not self.webseed_ready(now):
            return []
        alone = self.webseed_alone()
        origins = self._ws_origins
        origin_peer = bool(origins) and any(
            ps.addr[0] in origins and not ps.closed for ps in self.peers.values())
        quiet = now - self._peer_block_at
        # With the origin's own peer connected, a quiet swarm is no reason for HTTP before
        # _PEERS_STARVED: that peer and the web seed share the origin's uplink, so a range
        # we fetch is a piece its peer does not hand out meanwhile (a copy for one client
        # instead of a first copy into the swarm). The hub's peer serves as a p2p seed does.
        stalled = quiet >= _PEERS_STARVED or (
            quiet >= _PEERS_STALLED and now - self._peer_news_at >= _PEERS_STALLED
            and not origin_peer)
        hidden_seed = self.tracker_seeds > 0 and bool(self.peers)
        # "What no connected peer has" needs a connected peer: with none yet (a crowd's
        # client dials 30 peers after its announce, slower on a loaded host) every piece
        # looks missing, and a batch taken then is a first copy the hub's own peer would
        # have handed into the swarm anyway. Unconnected, the stall rule decides (2 s).
        lacks = bool(self.peers) and not hidden_seed
        # Alone with the origin's peer: it gets no requests (webseed_preferred), so the
        # batch may hold more (long ranges) and takes back what it alone was asked for.
        # So too when the tracker listed only that peer, not dialled yet: the second batch
        # goes out at the first one's last byte, which is often before that dial.
        prefer = alone and (origin_peer or self._tracker_origin_only)
        if alone:  # grows with the rate it shows: a slow web seed holds little
            nbytes = max(_SWARM_WS_BATCH_BYTES, int(self._ws_rate * _WS_BATCH_SECONDS))
            cap = self.settings.web_seed_batch_bytes * (_WS_PREFERRED_GROWTH if prefer else 1)
            limit = max(1, min(nbytes, cap) // self.piece_length)
        else:
            limit = max(1, _SWARM_WS_BATCH_BYTES // self.piece_length)
        picker = self.picker
        avail, prio, started = picker.availability, picker.priority, picker.in_progress
        # Alone and faster than the peers: pieces they were asked for but sent nothing of
        # yet are taken back (Cancel) for the web seed, which would otherwise idle while
        # a slower peer works through its queue (the hub's own peer on loopback).
        steal = alone and self._ws_rate > self.down.rate(now) - self.webseed_meter.rate(now)
        n = self.num_pieces
        first = 0 if alone else self.rng.randrange(n)
        batch: list[int] = []
        # In a swarm with nothing stalled and a seed the tracker counts (the hub's own
        # peer), no piece can qualify: the driver polls every 0.5 s, and each walk of
        # every piece found nothing (netns lab hybrid N=32: ~0.26 ms of a client's CPU per
        # poll). The draw above stays: the simulator's random stream is the same.
        for k in range(n if alone or stalled or lacks else 0):
            i = (first + k) % n
            ok = (not self.have[i]
                  and (not started(i) or (picker.only_requested(i)
                                          and (steal or (prefer and self._origin_only(i)))))
                  and i not in self._verifying and i not in reserved and prio(i)
                  and (alone or stalled or (lacks and avail(i) == 0)))
            if ok and (alone or not batch or batch[-1] == i - 1):
                batch.append(i)
                if len(batch) >= limit:
                    break
            elif batch and not alone:
                break
        self._ws_batch[source] = (now, self.webseed_bytes)
        for i in batch:
            if started(i):  # only requested, by a slower peer or by the origin's alone
                self._cancel_requests(i, now)
            picker.reserve((_WEBSEED, source), i)
        if batch:
            self._ws_live.add(source)
            if alone:
                self._ws_alone.add(source)
            self._ws_seen = now
            self._ws_pref = (math.nan, False)
            self.webseed_why = (
                "alone" if alone else
                f"no block from peers for {quiet:.1f} s" if stalled else
                f"no connected peer has them (the tracker counts {self.tracker_seeds} seeds)")
        return batch

    def webseed_cut(self, source: str) -> bool:
        """Stop ``source``'s batch where its body stands: it was taken alone (the first
        missing pieces, as many as the web seed's rate fills, the origin's own peer left
        idle) and we no longer are (the tracker counts other leechers, or one connected).
        The pieces not yet received go back to the peers (:meth:`webseed_release`).

        Why: the first of a crowd reads "alone" (nobody had announced yet) and its first
        batch took the origin's uplink while the others arrived; those pieces then sat
        at one client in a row, while the origin's peer, sharing that uplink, was slow to
        hand the others their first pieces (netns lab hybrid N=32: the crowd's first
        client fetched 1 MiB over HTTP in every run, and the swarm held less than p2p's
        at 2 s in 12 of 13 runs; cut, the hub sends 0.25-0.4 MiB of it, but the ratio
        did not measurably change: hybridlab-25). In a swarm, the origin's uplink is for
        first copies spread over the peers: a batch taken alone, grown to the whole file,
        would otherwise go on feeding one client while every new leecher waits on the
        origin's peer.

        Unlike :meth:`webseed_alone`, a peer at the web seed's host is never the other
        leecher: the hub's own peer dialling us (it dials its leechers at each of its
        tracker rounds) read as one until our next dial round, and a lone download's
        batch must not stop for it."""
        if source not in self._ws_alone:
            return False
        if self.tracker_leechers is not None and self.tracker_leechers > 1:
            return True  # the tracker counts us as a leecher too
        origins = self._ws_origins
        leechers = sum(1 for ps in self.peers.values()
                       if not ps.is_seed and not ps.closed and ps.addr[0] not in origins)
        # a seed the tracker counts may hide among them (a super-seed looks like a
        # leecher), except the origin's own, which we just left out
        seeds = self.tracker_seeds - (1 if origins and self.tracker_seeds > 0 else 0)
        return leechers > seeds

    def webseed_request_bytes(self) -> int:
        """Bytes per HTTP range request for the web seed's next batch: alone, about
        ``_WS_RANGE_SECONDS`` of its last batch's rate (one long range where the setting's
        size made many); with leechers around, ``web_seed_request_size``."""
        size = self.settings.web_seed_request_size
        if not self.webseed_alone():
            return size
        return max(size, int(self._ws_rate * _WS_RANGE_SECONDS))

    def _origin_only(self, index: int) -> bool:
        """Piece ``index`` was asked of the origin's own peer(s) only."""
        peers, origins = self.peers, self._ws_origins
        return all(h in peers and peers[h].addr[0] in origins
                   for h in self.picker.requesters(index))

    def _cancel_requests(self, index: int, now: float) -> None:
        """Withdraw every peer's outstanding requests for piece ``index`` (Cancel)."""
        for h in self.picker.requesters(index):
            ps = self.peers.get(h)
            if ps is None:
                continue
            dup = [b for b in ps.requested if b.index == index]
            for b in dup:
                del ps.requested[b]
                self.picker.request_failed(h, b)
            if dup and not ps.closed:
                self._send(ps, tuple(m.Cancel(b.index, b.begin, b.length) for b in dup), now)

    def webseed_arrived(self, now: float, nbytes: int, *, source: str = "") -> None:
        """The bodies of ``source``'s batch arrived whole (``nbytes``), its pieces not yet
        verified: the web seed's rate is measured now, without our hashing and writing
        (the driver asks for its next batch at once, under another ``source``, while
        these pieces are checked; they stay reserved until :meth:`webseed_release`)."""
        at, _ = self._ws_batch.pop(source, (now, 0))
        if now > at and nbytes > 0:
            self._ws_rate = nbytes / (now - at)

    def webseed_release(self, now: float, *, source: str = "", failed: bool = False) -> None:
        """The web seed's batch is over (done, ``failed`` or stopped): what it did not
        deliver goes back to the peers' pool, and after a failure the origin's peer too.
        Without :meth:`webseed_arrived` the rate is measured here, over the verified bytes."""
        at, before = self._ws_batch.pop(source, (now, self.webseed_bytes))
        if now > at and self.webseed_bytes > before:
            self._ws_rate = (self.webseed_bytes - before) / (now - at)
        self._ws_live.discard(source)
        self._ws_alone.discard(source)
        self._ws_ok_at = -math.inf if failed else now
        if failed:
            self._ws_seen = -math.inf
        self._ws_pref = (math.nan, False)
        self.picker.release((_WEBSEED, source))
        self._fill_all(now)
        if failed:
            self._dial(now)  # the origin's peer, held back while its web seed served

    # -- uploading -------------------------------------------------------------------------
    def _on_request(self, ps: PeerState, req: m.Request, now: float) -> None:
        if (not self.have[req.index]
                or len(ps.incoming) >= self._max_incoming
                or not ps.incoming.fits(req.length, self._max_incoming_bytes)
                or (ps.am_choking and not self._charge_allowed(ps, req))):
            if ps.fast:
                self.rejects_sent += 1
                self._send(ps, (m.RejectRequest(req.index, req.begin, req.length),), now)
            return
        ps.incoming.append(req)
        ps.slot_used_at = now
        if ps.handle not in self.upload_order:
            self.upload_order[ps.handle] = ps
        if len(ps.incoming) == 1:
            self._out.append(Serve(ps.handle))

    def _charge_allowed(self, ps: PeerState, req: m.Request) -> bool:
        """A request from a peer we choke: True (and its bytes charged) when its piece is
        in the allowed-fast set we sent it and that piece's budget still covers it."""
        budget = ps.allowed_out
        if not budget:
            return False
        left = budget.get(req.index, 0)
        if left < req.length:
            return False
        budget[req.index] = left - req.length
        return True

    def _grant_allowed(self, ps: PeerState, now: float) -> None:
        """BEP 6: on a fast peer's first Interested, if it is a starting peer (fewer than
        ``allowed_fast_set_size`` pieces), send it the canonical allowed-fast set of its
        address, less the pieces it has; we serve those while choking it, one piece's
        bytes each (:meth:`_charge_allowed`). Once per connection."""
        k = self._fast_k
        if not ps.fast or k <= 0 or ps.num_have >= k or ps.is_seed or self._ss is not None:
            ps.allowed_out = {}
            return
        ps.allowed_out = grant(ps.addr[0], self.info_hash, self.num_pieces, k, ps.have,
                               self.piece_length)
        if ps.allowed_out:
            self.allowed_fast_sent += len(ps.allowed_out)
            self._send(ps, tuple(map(m.AllowedFast, ps.allowed_out)), now)

    def blocks_sent(self, handle: Hashable, served: Sequence[m.Request], nbytes: int,
                    now: float) -> None:
        """The driver sent Piece messages for ``served`` (popped from ``incoming``)."""
        ps = self.peers.get(handle)
        if ps is None:
            return
        ps.last_send = ps.last_data = now
        ps.up.add(nbytes, now)
        self.up.add(nbytes, now)
        self._budget_at = math.nan  # the meter moved (see upload_budget)
        self.uploaded += nbytes
        ss = self._ss
        if ss is not None and handle in ss:
            # One call per run of blocks of the same piece (a piece's 64 blocks usually
            # go out together): the same offers settled as block by block.
            done = False
            index, run = -1, 0
            for req in served:
                if req.index != index:
                    if run:
                        done = ss.uploaded(handle, index, run, now) or done
                    index, run = req.index, 0
                run += req.length
            if run:
                done = ss.uploaded(handle, index, run, now) or done
            if done:
                self._offer(ps, now)
        if served:
            self._turn_over(ps, served[-1])

    def _turn_over(self, ps: PeerState, last: m.Request) -> None:
        """After blocks to ``ps``: its turn ends with its piece. The next piece it asked
        for waits behind the other peers' (one piece per turn); with nothing left of the
        piece it leaves the order; a piece cut short (its next requests are an RTT away)
        keeps its place, so the piece still completes first."""
        order = self.upload_order
        handle = ps.handle
        if handle not in order:
            return
        incoming = ps.incoming
        if incoming:
            if incoming[0].index != last.index:
                del order[handle]
                order[handle] = ps
        elif last.begin + last.length >= self.piece_size(last.index):
            del order[handle]
            self._upload_tail[handle] = None

    def upload_budget(self, now: float) -> int:
        """Bytes to keep written ahead across all peers: ``upload_ahead`` seconds of our
        measured upload rate, at least ``_AHEAD_MIN``; 0 when the turns are off: the
        setting is 0, or a piece leaves in less than ``upload_turn_piece_time`` at that
        rate.

        Why the piece time: a turn gains what a hop of a fresh piece waits behind the
        other peers' slices (with 5 peers served at once, 4 piece times): 0.4 s at 256 KiB
        over 20 mbit; a piece that leaves in a few ms waits little, and the driver's turn
        waits would cost more peer CPU than that. Why small pieces too (the lab's 32 KiB,
        13 ms over 20 mbit), though the least budget holds two of them: the turns still
        pick which two leave first, where without them the ~8 unchoked peers of a small
        piece size each got a slice of the uplink and their pieces after ~8 piece times
        (``lab simulate`` p2p 32 KiB seed 1: N=16/64/256 1.092/1.143/1.184 ->
        1.081/1.111/1.157x the bound)."""
        ahead = self._upload_ahead
        if not ahead:
            return 0  # off
        up = self.up
        if now == self._budget_at and up.total == self._budget_total:
            return self._budget  # the same meter at the same time: the same rate
        rate = up.rate(now)
        if rate * self._turn_piece_time > self.piece_length:
            budget = 0
        else:
            budget = max(_AHEAD_MIN, int(rate * ahead))
        self._budget_at = now
        self._budget_total = up.total
        self._budget = budget
        return budget

    def upload_grants(self, queued: Callable[[Hashable], int] | QueuedBytes, now: float,
                      slack: int = 0) -> list[tuple[Hashable, int]]:
        """Which peers the driver writes blocks to now, and up to how many bytes each (at
        least one block): in turn order, until what is written and not yet sent
        (``queued(handle)``, the driver's count: a callable or a :class:`QueuedBytes`)
        reaches :meth:`upload_budget`.

        Why one shared budget in turn order: a host's uplink is shared evenly by the
        connections with data queued, so six peers each fed their whole request queue
        all got their piece after six piece-times, and none could pass it on sooner
        (N=256 at t=1 s: 204 of 256 peers had no piece). Fed one piece at a time, the
        first peer has its piece after one piece-time and trades it while the next is
        sent. The first peer in turn with requests gets the rest of its current piece
        once the peers before it hold less than the budget, so a lone peer is never held
        below a piece written ahead (its own send buffer still limits it); the budget
        lets the next peers in while that drains, so the uplink stays busy (a socket
        whose buffer runs dry stalls). With the setting off every peer with requests
        gets an unlimited grant.

        ``slack``: bytes the driver adds to a non-zero budget, what leaves while it
        waits to run again (a host short of CPU runs its timers late: see the driver)."""
        budget = self.upload_budget(now)
        if budget:
            budget += slack
        order = self.upload_order
        out: list[tuple[Hashable, int]] = []
        if not budget:
            for h, ps in order.items():
                if ps.incoming:
                    out.append((h, 1 << 62))
            return out
        q = queued if isinstance(queued, QueuedBytes) else _CallQueued(queued)
        # What all hold, and what the first in turn with requests holds itself (only its
        # own count is read below: no list of every peer's, a boxed int each); queued()
        # once per peer, as the driver counts what it is asked.
        total = 0
        first = -1
        for h, ps in order.items():
            n = q.queued(h)
            total += n
            if first < 0 and ps.incoming:
                first = n
        tail = self._upload_tail
        if tail:
            for h in list(tail):
                left = q.queued(h) if h not in order else 0
                if left:
                    total += left
                else:
                    del tail[h]
        for h, ps in order.items():
            if not ps.incoming:
                continue
            if not out:
                if total - first >= budget:
                    break  # the peers before it still hold the budget
                # The first in turn: the rest of its piece, whatever its own queue.
                grant = max(ps.incoming.head_piece_bytes(), budget - total)
            elif total >= budget:
                break
            else:
                grant = budget - total
            grant = min(grant, ps.incoming.bytes)
            out.append((h, grant))
            total += grant
        return out

    # -- choking and super-seeding ---------------------------------------------------------
    @property
    def upload_only(self) -> bool:
        """What our BEP 10 handshake says as BEP 21's ``upload_only``: we are a seed, but
        not a super-seed. Why not a super-seed (libtorrent hides it too): a leecher drops
        an upload-only peer it finds uninteresting, and a super-seed shows no piece at
        first (libtorrent 2.1 leechers never stayed connected to ours)."""
        return self.complete and not self._super_seeding()

    def _super_seeding(self) -> bool:
        """Whether peers connecting now are super-seeded: the setting is on and we seed
        what we did not download in this session (an initial seed).

        Why not a leecher that finished: its pieces are out in the swarm already (its
        peers saw every Have), so hiding them only holds newcomers back, and a super-seed
        unchokes every interested peer, which split a finished peer's uplink across all
        of them while the rest waited for their last pieces (``lab simulate`` 256 KiB
        pieces, seeds 1-3: N=256 p2p 1.35-1.38 -> 1.32-1.33x the bound, hybrid
        1.35-1.37 -> 1.32-1.33; hybrid N=64 1.27-1.29 -> 1.25-1.27)."""
        if not self._super_seed or not self.complete or self.downloaded:
            return False
        if self._ss is None:
            # An offer is served once every block a peer requests is sent: pads are not.
            pads = self._pad_bytes
            self._ss = SuperSeeder(self.num_pieces,
                                   lambda i: self.piece_size(i) - pads.get(i, 0),
                                   self.picker.availability, self.rng)
        return True

    def _offer(self, ps: PeerState, now: float) -> None:
        """Drop the peer's offers of pieces it holds now, then hand out new offers."""
        ss = self._ss
        if ss is None:
            return
        if not self.settings.super_seed_shared:  # a window per peer
            if ps.closed or ps.is_seed:
                return
            rate = ps.up.rate(now) * 10 * self.settings.super_seed_window
            offers = ss.top_up(ps.handle, ps.have, max(2, int(rate / self.piece_length) + 1),
                               now)
            if offers:
                self._offered_at[ps.handle] = now
                self._send(ps, tuple(m.Have(i) for i in offers), now)
            return
        if not ps.closed and ps.handle in ss:
            ss.top_up(ps.handle, ps.have, 0)
        self._offer_round(now)

    def _offer_round(self, now: float) -> None:
        """Show pieces (Have) until about ``super_seed_window`` seconds of our upload, plus
        the offers' turnaround, is on offer across all peers (at least ``_SS_MIN_OFFERS``
        pieces), one piece at a time to the peer with the fewest open offers, then to the
        one offered to least recently.

        Why the turnaround (recent offers' mean time from Have to first block out, at most
        ``_SS_TURNAROUND_CAP`` windows): an offer uses our uplink only once its requests
        came back, so ``rate * turnaround`` of it waits on answers while about
        ``super_seed_window`` of our rate is being sent. Sized from the measured rate
        alone, the budget caps the rate whenever answers take longer than the window, and
        that rate sets the budget (netns lab, 10 ms, two busy cores: N=16, the seed sent
        2.1-2.2 of 2.4 MB/s while its first copy went out, 2.4 with it; hybrid N=32,
        answers in 0.17 s and more, the hub's peer 0.6-0.9 MB/s).

        Why the best rate of the fresh phase, not the one measured now: the turnaround
        counts only up to its cap, so answers slower than the span still cap the rate
        at what the budget carries per cycle, and a budget sized on that rate shrank with
        it, cycle after cycle, to about a piece per (cycle - span): 32 KiB pieces, 0.6 s
        answers, ~0.33 MB/s of 2.5 (the netns lab's N=32 stalls, the source 5-15 % busy
        once answers took 0.47-0.55 s). When our own uplink is the bottleneck the rate is
        the link's, so the best one is no larger and the cap's bound on our queue holds.
        (It does not ramp a budget whose answers are slow from the first offer: that
        stays at the floor.)

        Why a budget for the whole swarm, not per peer: with offers open to every peer at
        once our upload is split N ways, every piece completes only near ``F/u_s`` and the
        swarm has nothing to trade until the end (N=64: the whole torrent was on offer at
        once). A few pieces at a time each leave us in a fraction of a second, in turns
        across the peers, and are traded among them while we send the next ones."""
        ss = self._ss
        if ss is None or not self.settings.super_seed_shared:
            return
        if ss.fresh_left:
            rate = self.up.rate(now)
            if rate > self._ss_best_rate:
                self._ss_best_rate = rate
            else:
                rate = self._ss_best_rate
            window = self.settings.super_seed_window
            span = window + min(_SS_TURNAROUND_CAP * window, ss.turnaround(now))
            budget = max(_SS_MIN_OFFERS, int(rate * span / self.piece_length) + 1)
        else:
            budget = _SS_TAIL_OFFERS
        open_total = ss.open_count()
        done: set[Hashable] = set()  # had its turn in this pass: turns, not bursts
        gave = False
        offered_at = self._offered_at
        while open_total < budget:
            # the fewest open offers, then the longest since its last offer: compared
            # as (int, float) pairs, without making the tuple per peer
            best: PeerState | None = None
            best_open = 0
            best_at = 0.0
            for ps in self.peers.values():
                h = ps.handle
                if ps.closed or ps.is_seed or h in done or h not in ss:
                    continue
                n_open = ss.open_count(h)
                if best is not None and n_open > best_open:
                    continue
                at = offered_at.get(h, -math.inf)
                if best is None or n_open < best_open or at < best_at:
                    best, best_open, best_at = ps, n_open, at
            if best is None:
                if not gave:
                    return  # nobody can be shown anything more
                done.clear()
                gave = False
                continue
            done.add(best.handle)
            offers = ss.top_up(best.handle, best.have, best_open + 1, now)
            if offers:
                gave = True
                self._offered_at[best.handle] = now
                self._send(best, tuple(m.Have(i) for i in offers), now)
            open_total = ss.open_count()

    def _slots(self, now: float) -> int:
        if self._super_seeding():
            # Every interested peer gets its share of distinct pieces (the fluid schedule
            # that reaches the peer-to-peer bound): round-robin turns would leave offers idle.
            return max(self.settings.unchoke_slots, len(self.peers))
        slots = self.settings.unchoke_slots
        fit = int(self.up.rate(now) * _SLOT_PIECE_TIME / self.piece_length)
        return max(slots, min(2 * slots, fit))

    def _rechoke(self, now: float) -> None:
        self._rechoke_at = now + self.settings.rechoke_interval
        stats = [PeerStats(h, ps.peer_interested, ps.down.rate(now), ps.up.rate(now),
                           ps.is_seed, ps.snubbed, ps.connected_at)
                 for h, ps in self.peers.items()]
        settings = ChokerSettings(slots=self._slots(now),
                                  optimistic_interval=self.settings.optimistic_unchoke_interval,
                                  seeding=self.finished)
        self._choke = choose_unchoked(stats, now, settings, self.rng, self._choke)
        unchoke = self._choke.unchoked
        for h, ps in list(self.peers.items()):
            if h in unchoke:
                if ps.am_choking:
                    self._unchoke(ps, now)
            elif not ps.am_choking:
                self._choke_peer(ps, now)

    def _hand_over_slot(self, ps: PeerState, now: float) -> None:
        """An unchoked peer lost interest: choke it and give its slot to the best
        interested choked peer at once (no full rechoke, so the other slots do not churn
        on every such event; the next round re-ranks everyone as usual). The best is the
        one the choker would rank first: the fastest uploader to us when leeching, the
        least recently (then least) served when seeding; snubbed peers and seeds never."""
        self._choke_peer(ps, now)
        d = self._choke
        turns = d.turns  # copied only to be changed (it keeps every peer of the round)
        best = self._best_waiting(now)
        unchoked = set(d.unchoked)
        unchoked.discard(ps.handle)
        optimistic, since = d.optimistic, d.optimistic_since
        if best is not None:
            unchoked.add(best.handle)
            self._unchoke(best, now)
        if ps.handle == optimistic:  # the newcomer finishes the optimistic turn
            optimistic = best.handle if best is not None else None
        elif best is not None:
            changed = dict(turns)
            changed[best.handle] = now
            turns = changed
        self._choke = ChokeDecision(frozenset(unchoked), optimistic, since, turns)

    def _unchoke(self, ps: PeerState, now: float) -> None:
        """Unchoke ``ps``; its slot counts as used from now (see _reuse_idle_slots)."""
        if ps.am_choking:
            self._unchoked += 1
        ps.am_choking = False
        ps.slot_used_at = now
        self.unchokes_sent += 1
        self._send(ps, _UNCHOKE, now)

    def _reuse_idle_slots(self, now: float) -> None:
        """Between choke rounds, unchoke more interested peers while some of the unchoked
        ones leave their slot unused (asked for nothing for ``_SLOT_IDLE`` s): the slots
        count the peers that download from us, not the peers we let download.

        Why: behind one seed the pieces worth trading are the few it sent last, and a
        peer we unchoked often has them requested from others already; its slot idled
        while interested peers waited for the next round (``lab simulate`` N=16/64: an
        idle uplink had an interested choked peer in about one sample in eight). The
        idle peers stay unchoked (a new piece of ours may interest them at once); the
        next round re-ranks everyone as usual."""
        if self._super_seeding() or not self.settings.unchoke_slots:
            return  # every interested peer is unchoked already; or no slots to reuse
        waiting = sum(1 for ps in self.peers.values()
                      if ps.am_choking and ps.peer_interested and not ps.closed
                      and not ps.is_seed)
        if not waiting:
            return
        unchoked = idle = 0
        for ps in self.peers.values():
            if not ps.am_choking and not ps.closed:
                unchoked += 1
                if not ps.incoming and now - ps.slot_used_at >= _SLOT_IDLE:
                    idle += 1
        slots = self._slots(now) + 1
        room = min(slots - (unchoked - idle), int(slots * _SLOT_IDLE_CAP) - unchoked)
        for _ in range(min(waiting, room)):
            if not self._unchoke_best(now):
                break

    def _bootstrap_optimistic(self, now: float) -> None:
        """Move the optimistic unchoke to the interested choked peer with the fewest
        pieces when it lags (holds less than half of what we hold), unless the optimistic
        peer lags too (it is still catching up).

        Why: a peer with little to trade gets no regular slot (tit-for-tat ranks by what
        it sends us) and can only catch up through optimistic unchokes, and one held for
        ``optimistic_unchoke_interval`` (30 s) by a peer that trades already helps
        nobody. In ``lab simulate`` p2p N=256, peers that joined after their neighbours'
        first round found every slot taken: 16 to 21 had no piece from 1 to 5 s, the last
        one's first block came at 15.9 s; in hybrid N=64 one peer had 2 of its 31 peers
        unchoking it for 15 s, half the file to fetch when the others finished, and
        finished 1 s after them. Checked each tick: a peer starts at most one laggard a
        second, and every neighbour of a laggard sees it as one. A peer gets this for
        ``optimistic_unchoke_interval`` from its first such turn, no more: one that never
        gets pieces (a free rider) must not hold the slot for good."""
        if self._super_seeding() or not self.num_have or not self.settings.unchoke_slots:
            return  # a super-seed unchokes every interested peer; we have nothing to give;
            # no slots, no optimistic one either (as choose_unchoked: 0 = upload to nobody)
        d = self._choke
        given = self._lag_given
        limit = now - self.settings.optimistic_unchoke_interval
        current = self.peers.get(d.optimistic) if d.optimistic is not None else None
        if current is not None and not current.closed and not current.am_choking \
                and current.num_have * 2 < self.num_have \
                and given.get(current.handle, now) > limit:
            return
        lagging = [ps for ps in self.peers.values()
                   if ps.am_choking and ps.peer_interested and ps.num_have * 2 < self.num_have
                   and not ps.closed and given.get(ps.handle, now) > limit]
        if not lagging:
            return
        fewest = min(ps.num_have for ps in lagging)
        poorest = [ps for ps in lagging if ps.num_have == fewest]
        new = poorest[self.rng.randrange(len(poorest))]
        unchoked = set(d.unchoked)
        if current is not None and not current.am_choking and d.optimistic in unchoked:
            unchoked.discard(d.optimistic)
            self._choke_peer(current, now)
        self._unchoke(new, now)
        given.setdefault(new.handle, now)
        unchoked.add(new.handle)
        self._choke = ChokeDecision(frozenset(unchoked), new.handle, now, d.turns)

    def _choke_peer(self, ps: PeerState, now: float) -> None:
        """Choke ``ps`` and reject what it asked for (BEP 6), or drop it silently."""
        if not ps.am_choking:
            self._unchoked -= 1
        ps.am_choking = True
        msgs: list[m.Message] = [m.Choke()]
        self.chokes_sent += 1
        kept: list[m.Request] = []  # BEP 6: requests for allowed-fast pieces stay
        if ps.fast:
            for r in ps.incoming:
                if self._charge_allowed(ps, r):
                    kept.append(r)
                else:
                    msgs.append(m.RejectRequest(r.index, r.begin, r.length))
            self.rejects_sent += len(msgs) - 1
        ps.incoming.clear()
        for r in kept:
            ps.incoming.append(r)
        if not kept and ps.handle in self.upload_order:
            del self.upload_order[ps.handle]
            self._upload_tail[ps.handle] = None
        self._send(ps, tuple(msgs), now)

    def _best_waiting(self, now: float) -> PeerState | None:
        """The interested choked peer the choker would rank first: the fastest uploader
        to us when leeching, the least recently (then least) served when seeding;
        snubbed peers (when leeching) and seeds never."""
        seeding = self.finished
        turns = self._choke.turns
        best: PeerState | None = None
        b0 = b1 = b2 = 0.0  # best's key (k0, k1, a random tie-break), compared in order
        draw = self.rng.random  # (bound once: a by-name method look-up per peer otherwise)
        for other in self.peers.values():
            if (other.closed or not other.am_choking or not other.peer_interested
                    or other.is_seed or (other.snubbed and not seeding)):
                continue
            if seeding:
                k0 = turns.get(other.handle, -math.inf)
                k1 = other.up.rate(now)
            else:
                k0 = -other.down.rate(now)
                k1 = 0.0
            k2 = draw()
            # (k0, k1, k2) < best's, without a tuple per candidate
            if best is None or k0 < b0 or (k0 == b0 and (k1 < b1 or (k1 == b1 and k2 < b2))):
                best, b0, b1, b2 = other, k0, k1, k2
        return best

    def _unchoke_best(self, now: float) -> bool:
        """Unchoke the interested choked peer the choker would rank first (as in
        :meth:`_hand_over_slot`) on top of the current set; False if there is none."""
        d = self._choke
        best = self._best_waiting(now)
        if best is None:
            return False
        self._unchoke(best, now)
        turns = dict(d.turns)  # (a decision's turns are not changed in place)
        turns[best.handle] = now
        self._choke = ChokeDecision(d.unchoked | {best.handle}, d.optimistic,
                                    d.optimistic_since, turns)
        return True

    @property
    def choke_decision(self) -> ChokeDecision:
        return self._choke

    def churn(self) -> dict[str, int]:
        """The interest/choke messages we sent so far, by kind (AllowedFast too: with
        chokes, they say how much a swarm served choked peers)."""
        return {"interested": self.interested_sent, "not_interested": self.not_interested_sent,
                "choke": self.chokes_sent, "unchoke": self.unchokes_sent,
                "reject": self.rejects_sent, "allowed_fast": self.allowed_fast_sent}

    # -- time ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Housekeeping, about once a second: timeouts, snubs, keep-alives, queue sizes,
        the choke round when due, dials and announces."""
        s = self.settings
        # read once, not per peer: Settings is not compiled (each read is by name)
        peer_timeout, request_timeout = s.peer_timeout, s.request_timeout
        keepalive = s.keepalive_interval
        if self._held_haves:
            self._send_held_haves(now)
        for ps in list(self.peers.values()):
            if ps.closed:
                continue
            if now - ps.last_recv > peer_timeout:
                self._close(ps, "peer timed out")
                continue
            requested = ps.requested
            if requested and now - min(requested.values()) > request_timeout:
                stale = [b for b, t in requested.items() if now - t > request_timeout]
                ps.snubbed = True
                for b in stale:
                    del ps.requested[b]
                    self.picker.request_failed(ps.handle, b)
            if now - ps.last_send > keepalive:
                self._send(ps, _KEEPALIVE, now)
            ps.queue_target = self._queue_target(ps, now)
            self._update_interest(ps, now)
            self._fill(ps, now)
            ss = self._ss
            if ss is not None and not ps.peer_interested and ps.handle in ss \
                    and now - self._offered_at.get(ps.handle, -math.inf) >= _DECLINE_AFTER \
                    and ss.declined(ps.handle):
                self._offer(ps, now)  # a selective leecher: show it other pieces
        if now >= self._rechoke_at:
            self._rechoke(now)
        else:
            self._bootstrap_optimistic(now)
            self._reuse_idle_slots(now)
        self._dial(now)
        tracker = self.tracker
        if tracker is not None and self.active:
            starving = self.downloading and not self.peers and not self.dialer.candidates
            event = tracker.poll(now, starving)
            if event is not False:
                self._out.append(Announce(event if isinstance(event, str) else None))

    def _dial(self, now: float) -> None:
        if not self.active:
            return
        dialer = self.dialer
        room = (self.settings.max_connections_per_torrent - len(self.peers)
                - len(dialer.connecting))
        if room <= 0 and not (dialer.direct and self.downloading):
            # Nothing to dial and nobody to requeue: skip the address set (every tick
            # of every peer at its cap; each address is a new tuple in compiled code).
            return
        connected = {ps.addr for ps in self.peers.values()}
        for ps in self.peers.values():
            if ps.listen_addr is not None:
                connected.add(ps.listen_addr)
        if self.downloading:
            dialer.requeue_direct(now, connected)
        # Alone, with the web seed serving (webseed_preferred), the origin's own peer would
        # get no request: it is not dialled either (each side paid a handshake, bitfields
        # and its bookkeeping for nothing). It stays queued for the tick that needs it:
        # another leecher, a failed or stalled web seed.
        hold = self._ws_origins if self._ws_origins and self.webseed_preferred(now) \
            else frozenset()
        for addr in dialer.next(now, connected, room, hold, self.complete):
            self._out.append(Connect(addr))
        held = bool(hold) and any(a[0] in hold for a in dialer.candidates)
        if held != self._origin_held:  # webseed_alone's answer may change with it
            self._origin_held, self._ws_pref = held, (math.nan, False)

    def connect_done(self, addr: tuple[str, int]) -> None:
        """A dial finished, connected or not (a connection reports ``connected`` too)."""
        self.dialer.done(addr)

    def add_peers(self, addrs: Iterable[tuple[str, int]], now: float,
                  seeds: Iterable[tuple[str, int]] = ()) -> None:
        """Addresses to dial (a tracker, PEX…); dials start at once when there is room.
        ``seeds``: those of them the source says hold every piece (BEP 11's flag 0x02),
        left undialled while we are a seed (:class:`Dialer`)."""
        dialer = self.dialer
        for addr in seeds:
            dialer.seed(addr)
        dialer.add(addrs)
        self._dial(now)

    def tracker_response(self, now: float, *, interval: float,
                         peers: Iterable[tuple[str, int]], seeds: int | None,
                         leechers: int | None = None) -> None:
        if self.tracker is not None:
            self.tracker.succeeded(now, interval)
        peers = list(peers)
        if self.downloading:
            self.tracker_seeds = seeds or 0
            if leechers is not None:
                self.tracker_leechers = leechers
        self._tracker_origin_only = bool(peers) and all(
            ip in self._ws_origins for ip, _ in peers)
        self.add_peers(peers, now)

    def tracker_counts(self, seeds: int, others: int) -> None:
        """Counts the tracker's own host gave before our first announce (a hub's file
        info: ``seeds``, and ``others`` leechers, us not among them). They stand for the
        tracker's answer until it comes, so a lone downloader's web seed starts without
        waiting for the announce's round trip (:meth:`webseed_ready`); a swarm's client
        waits as before. Ignored once the tracker answered.

        No other leecher and at most one seed (the hub counts its own peer once) stand for
        an answer listing only the origin's peer: the web seed's second batch grows then
        (:meth:`webseed_batch`), not a third one once the answer is here (64 MiB from a
        loopback hub: the answer came ~7 ms after the second batch had started, capped at
        ``web_seed_batch_bytes``, and the third batch cost a request's round trip)."""
        if self.downloading and self.tracker_leechers is None:
            self.tracker_seeds = seeds
            self.tracker_leechers = others + 1  # as the tracker counts: us included
            self._tracker_origin_only = others == 0 and seeds <= 1

    def tracker_failed(self, now: float, why: str) -> None:
        if self.tracker is not None:
            self.tracker.failed(now, why)

    def stop(self) -> None:
        """The driver is stopping or failed the torrent: no more requests, dials, announces."""
        self.active = False

    def debug_state(self) -> dict[str, Any]:
        """Counts for tests and the lab (not a stable API)."""
        return {"peers": len(self.peers), "have": self.num_have, "banned": len(self.banned),
                "unfinished": len(self._src), "verifying": len(self._verifying),
                "strikes": dict(self.strikes)}
