"""``lab simulate``: N peers running the unchanged swarm core, in one process, in virtual time.

Why: two cores run about 16 real peers before CPU, not the links, sets the pace, yet the
questions (why does N=64 collapse? does the ratio hold at 1,000?) need hundreds or
thousands. Like libtorrent's ``simulation/setup_swarm``, each simulated host runs the
same sans-IO :class:`~swarmhub.engine.swarm.Swarm` a real peer runs; this module plays
the asyncio driver's part (carry out the core's actions, feed it events with a virtual
clock) over the fluid network of :mod:`swarmhub.lab.netmodel`, plus the services a lab
run has: a tracker (random ``numwant`` sample, interval, peer expiry), the source
(``swarmhub seed``, or the hub with its web seed and HTTP origin) and the clients.

What is modelled as the real driver does it: handshakes (1.5 RTT, then ``can_accept`` on
both sides and the session's connection cap), the extension handshake's ``reqq``,
message sizes as on the wire, uploads pulled from the peer's accepted requests into a
send buffer of ``send_buffer_bytes`` (control messages queue behind data; up to
``block_run`` blocks of one piece written back to back travel as one network item), a tick per
second, hashing as a fixed cost per byte, tracker announces and the hub's seeder dialling
every announcer, BEP 11 peer exchange (the engine's own :class:`~swarmhub.engine.pex.PexPeer`
books, on the driver's tick). What is not: packet loss, CPU limits, disk, process start-up time.
"""

from __future__ import annotations

import gc
import random
from collections import Counter, OrderedDict
from collections.abc import Callable
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
from swarmhub.engine.peerstate import PeerState
from swarmhub.engine.pex import PexPeer
from swarmhub.engine.picker import Block, BlockTable
from swarmhub.engine.swarm import TURN_POLL_MAX, QueuedBytes, Swarm, turn_regrant_at
from swarmhub.lab.netmodel import (
    MSS,
    OVERHEAD,
    SMALL,
    EventQueue,
    Link,
    Network,
    Pipe,
    wire,
)
from swarmhub.lab.simhosts import HostSpec, SimTracker
from swarmhub.lab.simservices import Services
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

__all__ = ["End", "Node", "Simulation", "slot_rate"]

_SIZES: Final[dict[type, int]] = {
    m.KeepAlive: 4, m.Choke: 5, m.Unchoke: 5, m.Interested: 5, m.NotInterested: 5,
    m.Have: 9, m.Request: 17, m.Cancel: 17, m.RejectRequest: 17, m.HaveAll: 5,
    m.HaveNone: 5, m.SuggestPiece: 9, m.AllowedFast: 9, m.Port: 7,
}
HANDSHAKE: Final = 68
_HAVE: Final = m.Have
_REQUEST: Final = m.Request
_BLOCK_WIRE: Final = 16384 + 13 + 12 * 66  #: wire bytes of one 16 KiB Piece message
EXT_HANDSHAKE: Final = 160  #: our BEP 10 handshake, about (m, v, p, reqq, metadata_size, yourip)
PIECE_HEADER: Final = 13
#: source ports of dialled connections (Linux's ip_local_port_range): a peer that dialled
#: us is known by one of these until its extension handshake's ``p`` says where it listens
_EPHEMERAL = (32768, 60999)
#: a run froze the collector's objects at its end (see :meth:`Simulation.run`)
_froze = False
#: the event calendar's slots per host and second of virtual time (see :func:`slot_rate`)
SLOTS_PER_HOST = 4
#: a previous run's frozen objects above this many: collect its garbage before the next
_COLLECT_FROZEN: Final = 1_000_000


def slot_rate(hosts: int) -> float:
    """Slots per second of the event calendar (:class:`~swarmhub.lab.netmodel.SlotQueue`)
    for a run of ``hosts``: a host queues ~170 events a second of virtual time outside
    the latency lane (flow completions mostly), so ``SLOTS_PER_HOST`` per host and second
    leaves a few dozen a slot at any N. A power of two: a slot's number is then the
    exact product ``when * rate`` truncated. The results do not depend on it, only the
    cost: a slot's binary search and list insert grow with its events, the slots passed
    empty and the ring's memory with the rate."""
    rate = 64
    while rate < SLOTS_PER_HOST * hosts:
        rate *= 2
    return float(rate)


def msg_size(msg: m.Message) -> int:
    """Bytes of ``msg`` on the wire (length prefix included)."""
    kind = type(msg)
    if kind is _REQUEST:  # (most messages: no dict look-up)
        return 17
    if kind is _HAVE:
        return 9
    size = _SIZES.get(kind)
    if size is not None:
        return size
    if isinstance(msg, m.Bitfield):
        return 5 + len(msg.bits)
    if isinstance(msg, m.Piece):
        return PIECE_HEADER + len(msg.data)
    return len(m.encode(msg))


def _dropped(_payload: object) -> None:
    """A closed connection's pipe delivers nothing (see :meth:`Simulation.close_end`)."""


class End:
    """Our side of one connection. The core knows it by ``uid``, an int: cheap to hash,
    and deterministic (set order inside the core must not vary from run to run)."""

    __slots__ = ("arrive", "far", "node", "open", "out", "pex", "ps", "remote", "uid")
    # mypyc: a closed End drops its far side and its bound method (see close_end)
    __deletable__ = ("arrive", "far")

    # Declared here, what every arrival reads first (compiled, the object's field order)
    open: bool
    ps: PeerState | None
    node: Node

    def __init__(self, node: Node, remote: Node, uid: int) -> None:
        self.node, self.remote = node, remote
        self.uid = uid
        self.open = True
        self.pex: PexPeer | None = None  #: BEP 11 books with the remote (all peers offer it)
        #: what the core's ``connected`` returned (None before): while the End is open the
        #: core has not been told ``disconnected``, so it stands for the uid (no lookup)
        self.ps: PeerState | None = None
        self.out: Pipe  # set by the simulation
        self.far: End  #: the other side's End
        #: ``far.got_blocks``, bound once: each item of blocks sent holds it until it
        #: arrives, and one bound per serve was an allocation (a tracked one) per item
        self.arrive: Callable[[list[Block]], None]

    def __repr__(self) -> str:
        return f"<End {self.node.host}->{self.remote.host}>"

    # What arrives from the other side (the network calls these one latency after the
    # last byte left): one function per kind, not one that dispatches on a tag, since
    # these run for every block and every message batch of the run.
    def got_blocks(self, blocks: list[Block]) -> None:
        """Piece messages for ``blocks`` arrived: a run of blocks of one piece, sent back
        to back, travels as one network item (see :attr:`Simulation.block_run`)."""
        if not self.open:
            return
        node = self.node
        sim = node.sim
        swarm = node.swarm
        assert swarm is not None  # ends exist only on hosts that run a core
        got = 0  # (loops, not sum/all/zip: builtins are looked up by name, per call)
        for b in blocks:
            got += b.length
        ps = self.ps
        stored = swarm.blocks_from(ps, blocks, sim.ev.now) if ps is not None else [
            False for _ in blocks]
        node.got += got
        useful = 0
        for i, b in enumerate(blocks):
            if stored[i]:
                useful += b.length
        node.useful += useful
        remote = self.remote
        remote.gave += got
        if remote is sim.source:
            sim.source_delivered(got)
        if swarm._out:
            sim.flush(node)

    def got_msgs(self, msgs: tuple[m.Message, ...]) -> None:
        """A batch of messages (one ``Send``) arrived."""
        if not self.open:
            return
        node = self.node
        swarm = node.swarm
        assert swarm is not None
        ps = self.ps
        if ps is not None:
            now = node.sim.ev.now
            for msg in msgs:  # (a native call: not through a bound method object)
                swarm.receive(ps, msg, now)
        if swarm._out:  # (most batches queue nothing: no call)
            node.sim.flush(node)

    def got_handshake(self, _payload: object) -> None:
        """The accepting side's handshake arrived (we dialled)."""
        if self.open:
            self.node.sim.handshake_reply(self)


class Node:
    """One simulated host: its links, its swarm core and what the run records about it."""

    # Declared here, what every arrival and upload turn reads first (compiled, the
    # object's field order: in __init__'s order ``swarm`` sat at byte 88 of 224)
    swarm: Swarm | None
    sim: Simulation
    gone: bool
    turns: bool
    got: int
    useful: int
    gave: int
    up: Link
    regrant_at: int
    granted_at: float

    def __init__(self, sim: Simulation, host: int, spec: HostSpec) -> None:
        self.sim = sim
        self.host = host
        # A /24 of its own, as hosts of a real swarm mostly are: BEP 6 derives a peer's
        # allowed-fast set from its /24, and one shared /24 would grant everyone the same.
        self.addr = (f"{10 + (host >> 16)}.{host >> 8 & 255}.{host & 255}.1", 6881)
        self.peer_id = b"-SH0100-" + host.to_bytes(12, "big")
        self.spec = spec
        self.up = Link(spec.up_bps / 8, f"h{host}-up")
        self.down = Link(spec.down_bps / 8, f"h{host}-down")
        self.swarm: Swarm | None = None
        self.ends: dict[End, None] = {}
        self.started: float | None = None
        self.done: float | None = None
        self.gone = False
        self.got = self.gave = self.useful = 0
        self.webseed_bytes = 0
        self.ws_reserved: set[int] = set()
        self.ws_pipe: Pipe | None = None
        #: the read cache (pieces, LRU) and the disk reads in flight -> who waits
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.cache_pieces = max(2, sim.settings.read_cache_bytes // sim.piece_length)
        self.reads: dict[int, list[End]] = {}
        #: uploading in turns (see Simulation._turns)
        self.turns = False
        #: in turns: the grants are asked again once what is written ahead is down to
        #: this many bytes, or TURN_POLL_MAX s after ``granted_at`` (see _drained)
        self.regrant_at = 0
        self.granted_at = 0.0


class _Queued(QueuedBytes):
    """Wire bytes written to connection ``uid`` and not yet sent (``upload_grants``'
    count), for the core to call natively (a bound method was a Python-level call and a
    boxed int per peer in turn). The cast matters: a list indexed by ``Any`` is ``Any`` to
    mypy (its ``__getitem__`` overloads both match), and mypyc then looks every attribute
    up by name. It reads the pipe straight from its list by uid, not through the End (one
    cold object less per peer in turn: at N=1,000 most of this call's time is misses)."""

    def __init__(self, out_by_uid: list[Pipe | None]) -> None:
        self.out_by_uid = out_by_uid  # the Simulation's list (grown in place, never replaced)

    def queued(self, handle: object) -> int:
        pipe = self.out_by_uid[cast(int, handle)]
        if pipe is None:
            return 0
        return pipe.queued


class Simulation:
    """The event loop, the network and the hosts of one simulated run (see the module doc).

    ``hosts[0]`` is the source; ``mode`` is ``p2p`` (tracker + ``swarmhub seed``),
    ``hybrid`` (the hub: tracker, super-seeding peer and web seed) or ``cs`` (HTTP only).
    """

    def __init__(self, mode: str, specs: list[HostSpec], size: int, piece_length: int,
                 settings: Settings, *, rng: random.Random,
                 hash_rate: float = 1.6e9, jitter: float = 0.002,
                 disk_read: float = 0.0002, join_times: list[float] | None = None,
                 lifetimes: list[float | None] | None = None,
                 seed_leaves_after_copy: bool = False, block_run: int = 4,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.mode = mode
        self.size = size
        self.piece_length = piece_length
        self.num_pieces = -(-size // piece_length)
        #: every host's picker takes its Blocks from here and the upload loop sends
        #: these: a block arrives as the object its request recorded (see BlockTable)
        self.blocks = BlockTable(self.num_pieces, piece_length, size)
        self.settings = settings
        self.rng = rng
        self.hash_rate = hash_rate
        #: the most a dial waits to leave (s): process scheduling, in the lab
        self.jitter = jitter
        #: seconds to read a piece for uploading (page cache + the executor's round trip)
        self.disk_read = disk_read
        #: blocks of one piece sent back to back travel as one network item of at most
        #: this many (each keeps its own wire size): a quarter of the events per block, at
        #: the cost of the run's first blocks arriving with its last
        self.block_run = block_run
        #: arrivals (one latency after leaving) take the event queue's FIFO lane
        self.ev = EventQueue(lane_delay=specs[0].latency, slot_rate=slot_rate(len(specs)))
        self.net = Network(self.ev)
        self.nodes = [Node(self, i, spec) for i, spec in enumerate(specs)]
        self.source = self.nodes[0]
        self.clients = self.nodes[1:]
        self.by_addr = {n.addr: n for n in self.nodes}
        # What the lab's tracker (--interval 2 --min-interval 1) and hub (--tracker-interval
        # 10, so its min interval is min(60, 10)) hand out.
        interval = 2 if mode == "p2p" else 10
        self.tracker = SimTracker(interval=interval, min_interval=1 if mode == "p2p" else 10,
                                  rng=random.Random(rng.getrandbits(64)))
        self.join_times = join_times or [0.0] * len(self.clients)
        self.lifetimes = lifetimes or [None] * len(self.clients)
        self.seed_leaves_after_copy = seed_leaves_after_copy
        self.on_event = on_event or (lambda _e: None)
        self._uid = 0  #: the last connection end's uid (two per connection accepted)
        #: open connection ends by the handle their core knows them by (a list indexed
        #: by uid, None once closed: uids count up from 2, and a list index is cheaper
        #: than a dict lookup on the per-message paths)
        self.by_uid: list[End | None] = [None, None]
        #: each open End's ``out`` pipe, by the same uid (None once closed): the per-Send
        #: and per-grant paths need the pipe alone, and the End is one more cold object
        self.out_by_uid: list[Pipe | None] = [None, None]
        #: handshakes refused, by reason (the swarm's connectivity, for the report)
        self.refusals: Counter[str] = Counter()
        self._source_sent = 0
        self.pending = len(self.clients)
        #: payload bytes the hub's HTTP delivered (web seed ranges, cs downloads)
        self.http_bytes = 0
        #: the source left after one copy (virtual time), or None
        self.source_left: float | None = None
        self.services = Services(self)
        self._on_drain = self._drained  # one bound method shared by every pipe
        self._queued = _Queued(self.out_by_uid)
        self._drain_at = settings.send_buffer_bytes // 4  #: serve again below this
        # Settings read per item and per serve, kept here: Settings is not compiled, so
        # each ``self.settings.x`` is a Python attribute lookup (it is frozen: no change)
        self._upload_ahead = settings.upload_ahead
        self._send_buffer = settings.send_buffer_bytes
        self._handlers: dict[type, Callable[[Node, Any], None]] = {
            Send: self._do_send,
            Broadcast: self._do_broadcast,
            Serve: self._do_serve,
            Verify: self._do_verify,
            Close: lambda _n, a: self._close_uid(a.peer),
            Connect: lambda n, a: self._dial(n, a.addr),
            Announce: lambda n, a: self.services.announce(n, a.event),
            Completed: lambda n, _a: self._completed(n),
            Banned: self._do_nothing,
            PieceFailed: self._do_nothing,
        }

    # -- set-up ----------------------------------------------------------------------------
    def _swarm(self, node: Node, seed: bool, trackers: bool) -> Swarm:
        s = Swarm(self.num_pieces, self.piece_length, self.size, self.settings,
                  rng=random.Random(self.rng.getrandbits(64)), now=self.ev.now,
                  have=b"\x01" * self.num_pieces if seed else None, trackers=trackers,
                  blocks=self.blocks)
        s.dialer.own.add(node.addr)
        return s

    def start(self) -> None:
        """Schedule the source at time 0 and every client at its join time."""
        src = self.source
        src.started = 0.0
        if self.mode != "cs":
            src.swarm = self._swarm(src, True, trackers=self.mode == "p2p")
            if self.mode == "hybrid":
                self.tracker.register(src.addr, True, 0.0, permanent=True)
            self._tick(src)
        for node, t in zip(self.clients, self.join_times, strict=True):
            self.ev.at(t, self._join, node)

    def _join(self, node: Node) -> None:
        now = self.ev.now
        node.started = now
        i = node.host - 1
        life = self.lifetimes[i]
        if life is not None:
            self.ev.at(now + life, self._leave, node)
        if self.mode == "cs":
            self.services.http_get(node, [(0, self.size)], cs=True)
            return
        node.swarm = self._swarm(node, False, trackers=True)
        self._tick(node)
        if self.mode == "hybrid":
            node.swarm.webseed_origin([self.source.addr[0]], now)  # as the driver does
            self.ev.at(now, self.services.ws_loop, node)

    def _tick(self, node: Node) -> None:
        if node.gone or node.swarm is None:
            return
        node.swarm.tick(self.ev.now)
        self.flush(node)
        if self.settings.pex:  # after the core's tick, as the driver's tick loop
            self.services.pex_tick(node)
        self.ev.at(self.ev.now + 1.0, self._tick, node)

    # -- carrying out the core's actions -----------------------------------------------------
    def flush(self, node: Node) -> None:
        """Carry out the queued actions of ``node``'s core, as the asyncio driver does."""
        swarm = node.swarm
        assert swarm is not None
        if not swarm._out:
            return  # nothing queued (most blocks and Haves): no take() call
        handlers = self._handlers
        while actions := swarm.take():
            for a in actions:
                # Send and Serve are most actions of a run: native calls, not a dict
                # lookup and a call through a bound method each
                kind = type(a)
                if kind is Send:
                    self._do_send(node, cast(Send, a))
                elif kind is Serve:
                    self._do_serve(node, cast(Serve, a))
                else:
                    handlers[kind](node, a)

    def _do_send(self, node: Node, a: Send) -> None:
        pipe = self.out_by_uid[cast(int, a.peer)]
        if pipe is not None:  # (None once its End closed)
            msgs = a.messages
            size = 0
            for msg in msgs:
                size += msg_size(msg)
            self.net.send(pipe, size, msgs)  # the pipe's deliver: end.far.got_msgs

    def _do_broadcast(self, node: Node, a: Broadcast) -> None:
        """Send to each peer; those whose pipe is idle (the message skips the fluid model)
        and that share a latency get one event between them: a Have to 50 peers is one
        heap entry, not 50 (the largest cost of a simulated swarm is its Haves)."""
        msgs = a.messages
        size = 0
        for msg in msgs:
            size += msg_size(msg)
        send = self.net.send
        by_uid = self.by_uid
        small = wire(size) <= SMALL
        groups: dict[float, list[End]] = {}
        # the last group looked up, by its latency (a native float): most pipes share one
        # latency, and each dict look-up boxed and hashed a float (~380 instructions)
        last_lat = -1.0
        last: list[End] = []
        for uid in a.peers:
            end = by_uid[cast(int, uid)]
            if end is None or not end.open:
                continue
            pipe = end.out
            if small and not pipe.active:
                lat = pipe.latency
                if lat != last_lat:
                    group = groups.get(lat)
                    if group is None:
                        group = groups[lat] = []
                    last_lat, last = lat, group
                last.append(end.far)
            else:
                send(pipe, size, msgs)  # the pipe's deliver: end.far.got_msgs
        if groups:
            nbytes = wire(size)
            for lat, ends in groups.items():
                node.up.sent += nbytes * len(ends)
                self.ev.after(lat, self._deliver_many, (ends, msgs))

    def _deliver_many(self, arg: tuple[list[End], tuple[m.Message, ...]]) -> None:
        """One broadcast reached several peers at once (End.got_msgs for each, inlined:
        this runs for every Have of the run)."""
        ends, msgs = arg
        now = self.ev.now
        flush = self.flush
        # one Have (every broadcast of a piece passed): its index read once, not per peer
        have = msgs[0].index if len(msgs) == 1 and type(msgs[0]) is _HAVE else -1
        for end in ends:
            ps = end.ps
            if not end.open or ps is None:
                continue
            node = end.node
            swarm = node.swarm
            assert swarm is not None
            if have >= 0:
                swarm.have_from(ps, have, now)
            else:
                for msg in msgs:
                    swarm.receive(ps, msg, now)
            if swarm._out:
                flush(node)

    def _do_serve(self, node: Node, a: Serve) -> None:
        end = self.by_uid[cast(int, a.peer)]
        if end is not None:
            self.serve(end)

    def _close_uid(self, uid: int) -> None:
        end = self.by_uid[uid]
        if end is not None:
            self.close(end)

    def _do_verify(self, node: Node, a: Verify) -> None:
        assert node.swarm is not None
        cost = node.swarm.piece_size(a.index) / self.hash_rate
        self.ev.at(self.ev.now + cost, self._verified, (node, a.index))

    def _do_nothing(self, node: Node, a: Action) -> None:
        pass  # Banned, PieceFailed: no liars in the simulation

    def _verified(self, arg: tuple[Node, int]) -> None:
        node, index = arg
        if node.gone or node.swarm is None:
            return
        node.swarm.piece_verified(index, True, self.ev.now)
        self.flush(node)

    def _completed(self, node: Node) -> None:
        if node.done is None and node is not self.source:
            node.done = self.ev.now
            self.pending -= 1
            self.on_event({"event": "finished", "host": node.host, "at": node.done})

    def serve(self, end: End) -> None:
        """Serve ``end``'s node: with ``upload_ahead`` the core's grants (one shared
        budget written ahead, in the core's turn order), else ``end`` alone up to its send
        buffer."""
        if self._turns(end.node):
            self.serve_node(end.node)
        else:
            self._serve(end, None)

    def _turns(self, node: Node) -> bool:
        """Whether ``node`` uploads in turns now (the core's budget: a piece leaves
        slowly); when they just ended, every peer waiting a turn is served first."""
        swarm = node.swarm
        # (statements, not ``bool(a and b and c)``: that chain of a float, a bool and an
        # int is an object compiled, with the budget boxed per call)
        on = False
        if self._upload_ahead and swarm is not None:
            budget = swarm.upload_budget(self.ev.now)
            if budget:
                on = True
                node.regrant_at = turn_regrant_at(budget, self.piece_length)
        if node.turns and not on:
            node.turns = False
            self.serve_node(node)  # no budget: every peer with requests, unlimited
        node.turns = on
        return on

    def serve_node(self, node: Node) -> None:
        """Write to the peers the core grants a share of the budget, as the upload loop."""
        swarm = node.swarm
        if swarm is None or node.gone or not swarm.upload_order:
            return
        by_uid = self.by_uid
        for uid, grant in swarm.upload_grants(self._queued, self.ev.now):
            end = by_uid[cast(int, uid)]
            if end is not None and end.node is node:
                self._serve(end, grant)

    def _serve(self, end: End, grant: int | None) -> None:
        """Write accepted requests into the send buffer as the upload loop does: a batch
        (at most 1 MiB, or ``grant`` bytes then stop) of blocks whose pieces are in the
        read cache, ``blocks_sent``, then the next; a piece not cached is read from disk
        first (``disk_read`` s). Batching matters: a super-seed's next offer (a Have)
        goes out between batches, ahead of the blocks still to come, and the peer
        requests it on its next block."""
        node = end.node
        swarm = node.swarm
        if not end.open or swarm is None:
            return
        ps = end.ps
        if ps is None:
            return
        incoming = ps.incoming
        pipe = end.out
        limit = self._send_buffer
        batch = 1 << 20 if grant is None else min(grant, 1 << 20)
        net = self.net  # (net.send_wire a native call; a bound method in a local is not)
        arrive = end.arrive
        cache = node.cache
        table = self.blocks
        while incoming and pipe.queued < limit:
            # A run delays its first blocks, and so the peer's refill requests for them:
            # at most half of what it has queued here, so that the other half still keeps
            # this uplink busy while those requests travel (a queue of 2 or 3 in a swarm's
            # tail gets single blocks, as the real driver sends them). Measured: half, a
            # quarter or no bound moved the last completion by < 1% (N=4, 8, 100, seeds
            # 1-3), while half carries 1.8 blocks per item at N=100, a quarter 1.05.
            depth = len(incoming) + pipe.queued // _BLOCK_WIRE
            run_max = min(self.block_run, max(1, depth // 2))
            served = []
            nbytes = 0
            items = pipe.items
            while incoming and nbytes < batch:
                req = incoming[0]
                index = req.index
                if index not in cache:
                    break
                incoming.popleft()
                length = req.length
                size = PIECE_HEADER + length
                size += -(-size // MSS) * OVERHEAD  # wire(size), inlined
                block = table.get(index, req.begin, length)
                # The queue's last item (never the head, which is leaving) takes the block
                # if it is a run of the same piece with room: a run grows across serves,
                # as blocks written back to back merge in the peer's socket buffer.
                # (three slots an item: size, function, payload; the function is
                # ``arrive`` for a run of blocks)
                if len(items) > 3 and items[-2] is arrive:
                    run = cast("list[Block]", items[-1])  # (Any: read by name, if not cast)
                    if run[0].index == index and len(run) < run_max:
                        run.append(block)
                        items[-3] = cast(int, items[-3]) + size
                        pipe.queued += size
                        pipe.up.backlog += size
                        served.append(req)
                        nbytes += length
                        continue
                net.send_wire(pipe, size, [block], arrive)
                served.append(req)
                nbytes += length
            if not served:
                self._read(node, incoming[0].index, end)
                return
            cache.move_to_end(served[-1].index)
            swarm.blocks_sent(end.uid, served, nbytes, self.ev.now)
            self.flush(node)
            if not end.open:
                return
            if grant is not None:
                pipe.waiting = True  # each item that leaves may let the next peer in
                return
        pipe.waiting = bool(incoming)

    def _read(self, node: Node, index: int, end: End) -> None:
        """Read piece ``index`` into ``node``'s cache (one read however many wait), then
        resume serving ``end``."""
        waiting = node.reads.get(index)
        if waiting is not None:
            waiting.append(end)
            return
        node.reads[index] = [end]
        self.ev.at(self.ev.now + self.disk_read, self._read_done, (node, index))

    def _read_done(self, arg: tuple[Node, int]) -> None:
        node, index = arg
        cache = node.cache
        cache[index] = None
        while len(cache) > node.cache_pieces:
            cache.popitem(last=False)
        for end in node.reads.pop(index, []):
            if not node.gone:
                self.serve(end)

    def _drained(self, pipe: Pipe) -> None:
        """Room in ``pipe`` (an End's ``out``): serve more once it is down to a quarter.

        In turns, as the real driver's look-again timer (``Uploader._grants_now``): the
        grants are asked again once what the host has written ahead (``Link.backlog``)
        is down to the budget less min(half of it, a piece), or ``pipe`` ran empty, or
        TURN_POLL_MAX s passed; not as each item leaves (~a block, 6.5 ms at 20 mbit).
        The pass per item let the next peer's turn begin with the budget still ahead:
        256 KiB pieces, p2p N=8 seed 1, 14.9 s where the netns lab takes 15.8-16.8
        (now 16.2 s; at 32 KiB the two passes give the same)."""
        end = cast(End, pipe.owner)  # (typed Any there: read by name, twice per item)
        node = end.node
        if self._turns(node):
            now = self.ev.now
            if (pipe.up.backlog <= node.regrant_at or not pipe.queued
                    or now - node.granted_at >= TURN_POLL_MAX):
                node.granted_at = now
                self.serve_node(node)
        elif pipe.queued < self._drain_at:
            self.serve(end)

    def source_delivered(self, nbytes: int) -> None:
        self._source_sent += nbytes
        if (self.seed_leaves_after_copy and self.source_left is None
                and self._source_sent >= self.size):
            self.source_left = self.ev.now
            self.ev.at(self.ev.now, self._leave, self.source)

    # -- connections -------------------------------------------------------------------------
    @staticmethod
    def _lat(a: Node, b: Node) -> float:
        """One-way latency between two hosts: the mean of their access latencies (the
        lab's single ``--latency`` when every host has the same)."""
        return (a.spec.latency + b.spec.latency) / 2

    def _dial(self, node: Node, addr: tuple[str, int]) -> None:
        target = self.by_addr.get(addr)
        if target is None or target.gone or target.swarm is None:
            rtt = 2 * (self._lat(node, target) if target is not None else node.spec.latency)
            self.ev.at(self.ev.now + rtt, self._dial_failed, (node, addr))
            return
        node.up.sent += HANDSHAKE + EXT_HANDSHAKE
        # The dial leaves after a scheduling delay, as in the lab (two peers that dial
        # each other at once keep the connection the lower peer id opened: the core's
        # can_accept rule, given the direction).
        delay = 3 * self._lat(node, target) + self.rng.random() * self.jitter
        self.ev.at(self.ev.now + delay, self._accept, (node, target))

    def _dial_failed(self, arg: tuple[Node, tuple[str, int]]) -> None:
        node, addr = arg
        if not node.gone and node.swarm is not None:
            node.swarm.connect_done(addr)
            self.flush(node)

    @property
    def connections(self) -> int:
        """Connections accepted so far (each a handshake both ends paid for)."""
        return self._uid // 2

    @staticmethod
    def _from_addr(dialler: Node, uid: int) -> tuple[str, int]:
        """The address a connection that ``dialler`` opened comes from (a port per
        connection, from its uid: no rng draw, so runs stay as they were)."""
        low, high = _EPHEMERAL
        return dialler.addr[0], low + (uid >> 1) % (high - low + 1)

    def _admit(self, node: Node, other: Node, addr: tuple[str, int],
               outgoing: bool) -> str | None:
        swarm = node.swarm
        assert swarm is not None
        if len(node.ends) >= self.settings.max_connections:  # ends holds open ones only
            reason: str | None = "too many connections in this session"
        else:
            reason = swarm.can_accept(addr, other.peer_id, self.ev.now,
                                      outgoing=outgoing, local_id=node.peer_id)
            self.flush(node)
        if reason is not None:
            self.refusals[reason] += 1
        return reason

    def _pipe(self, a: End, b: End) -> Pipe:
        """The pipe a -> b (b's ``receive`` gets what a sends)."""
        pipe = Pipe(a.node.up, b.node.down, self._lat(a.node, b.node), b.got_msgs)
        pipe.owner = a
        pipe.on_drain = self._on_drain
        return pipe

    def _accept(self, arg: tuple[Node, Node]) -> None:
        """The dialler's handshake reached ``target``: admit it, reply, tell the core."""
        node, target = arg
        uid = self._uid + 2
        if target.gone or target.swarm is None \
                or self._admit(target, node, self._from_addr(node, uid), False) is not None:
            self.ev.after(self._lat(node, target), self._dial_failed, (node, target.addr))
            return
        self._uid = uid
        mine, theirs = End(target, node, uid), End(node, target, uid + 1)
        mine.out, theirs.out = self._pipe(mine, theirs), self._pipe(theirs, mine)
        mine.far, theirs.far = theirs, mine
        mine.arrive, theirs.arrive = theirs.got_blocks, mine.got_blocks
        self.by_uid += (mine, theirs)  # at indices uid and uid + 1
        self.out_by_uid += (mine.out, theirs.out)
        target.ends[mine] = None
        self.net.send(mine.out, HANDSHAKE + EXT_HANDSHAKE, None, theirs.got_handshake)
        self._connected(mine, False)

    def _connected(self, end: End, outgoing: bool) -> None:
        node = end.node
        swarm = node.swarm
        assert swarm is not None
        remote = end.remote
        addr = remote.addr if outgoing else self._from_addr(remote, end.uid)
        end.ps = swarm.connected(end.uid, addr, remote.peer_id, fast=True, now=self.ev.now,
                                 outgoing=outgoing)
        # its extension handshake came with its handshake; every host listens on its addr
        swarm.extension_handshake(end.uid, reqq=self.settings.max_outstanding_incoming_requests,
                                  listen_port=remote.addr[1])
        self.flush(node)

    def handshake_reply(self, end: End) -> None:
        """The accepting side's handshake reached the dialler."""
        node = end.node
        if node.gone or node.swarm is None:
            self.close_end(end)
            return
        node.swarm.connect_done(end.remote.addr)
        if self._admit(node, end.remote, end.remote.addr, True) is not None:
            self.close_end(end)
            self.flush(node)
            return
        node.ends[end] = None
        self._connected(end, True)

    def close(self, end: End) -> None:
        """The core closed ``end``: drop it here now, at the far end one latency later."""
        if not end.open:
            return
        self.close_end(end)
        node = end.node
        if node.swarm is not None:
            node.swarm.disconnected(end.uid, self.ev.now)
            self.flush(node)

    def close_end(self, end: End) -> None:
        end.open = False
        end.node.ends.pop(end, None)
        self.by_uid[end.uid] = None
        self.out_by_uid[end.uid] = None
        self.net.close(end.out)
        far = end.far
        self.ev.after(end.out.latency, self._remote_closed, far)
        if not far.open:
            # Both sides are closed: break the connection's reference cycles (End.far,
            # End.arrive, Pipe.owner, Pipe.deliver) so that refcounting frees it now. The collector
            # is off during a run, and at N=10,000 the connection storm alone leaves
            # ~300,000 closed connections that would stay in memory, interleaved with the
            # live ones, until the run ends. Whatever still holds an End (an event in
            # flight) sees it closed and never reads ``far``.
            for e in (end, far):
                pipe = e.out
                pipe.owner = pipe.on_drain = None
                pipe.waiting = False
                pipe.deliver = _dropped
            del end.far, far.far, end.arrive, far.arrive

    def _remote_closed(self, end: End) -> None:
        if end.open:
            self.close(end)

    # -- churn -------------------------------------------------------------------------------
    def _leave(self, node: Node) -> None:
        if node.gone:
            return
        swarm = node.swarm
        if node is not self.source and node.done is None:
            self.pending -= 1
            self.on_event({"event": "failed", "host": node.host, "error": "left"})
        if swarm is not None:
            swarm.stop()
            self.services.announce(node, "stopped")
        node.gone = True
        for end in list(node.ends):
            self.close_end(end)
        if node.ws_pipe is not None:
            self.net.close(node.ws_pipe)

    # -- the run -----------------------------------------------------------------------------
    def run(self, until: float) -> None:
        """Run until every client is done or left, or virtual time ``until``.

        The cyclic garbage collector is off meanwhile: a swarm keeps millions of objects
        alive, and each full collection walks them all (at N=10,000 the connection storm
        of the first 0.1 s took minutes of collections).

        At the end every object the collector tracks is frozen (``gc.freeze``) before it
        resumes: otherwise its next young collection, then the older ones, walk all the
        run made (N=10,000 to t=4 s: 8.7 of 123 CPU-s between the run's end and the
        result). The run's garbage (cycles: the open connections, the hosts and the
        simulation) stays frozen: ``swarmhub`` freezes everything at exit anyway, and the
        next run unfreezes it (and collects it first if it is large, since the collector
        is off during a run).

        The events still queued at the end are dropped (a run is not resumed): the
        collector does not see through an :class:`~swarmhub.lab.netmodel.Event`, so a
        queue left full would keep the whole simulation alive."""
        global _froze
        if _froze:
            _froze = False
            big = gc.get_freeze_count() > _COLLECT_FROZEN
            gc.unfreeze()
            if big:
                gc.collect()
        self.start()
        ev = self.ev
        q = ev._q
        lane = ev._lane
        enabled = gc.isenabled()
        gc.disable()
        try:
            # EventQueue.run inlined (the calendar's and the lane's heads merged): this
            # loop runs once per event of the run.
            while self.pending > 0:
                # the calendar's first < the lane's first in (when, seq) order (insertion
                # numbers are unique), on the records' unboxed fields
                ln = lane.first()
                h = q.first()
                if h is not None and (ln is None or h.when < ln.when
                                      or (h.when == ln.when and h.seq < ln.seq)):
                    if h.when > until:
                        break
                    q.take()
                    event = h
                elif ln is not None and ln.when <= until:
                    event = lane.popleft()
                else:
                    break
                ev.now = event.when
                ev.running = event.seq
                event.fn(event.arg)
        finally:
            ev.clear()
            gc.freeze()
            _froze = True
            if enabled:
                gc.enable()
        if self.pending > 0:
            ev.now = max(ev.now, until)

