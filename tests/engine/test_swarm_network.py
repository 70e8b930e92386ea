"""Whole swarms of sans-IO cores wired together in memory, in virtual time.

A tiny stand-in for the lab's simulator (issue 8, section 2): each node is a
:class:`Swarm`; the "network" delivers messages at once, uploads a fixed number of blocks
per node and virtual second, and passes every hash check. No
sockets, no sleeps — it shows the core alone can run a swarm to completion, and how the
initial seed's upload compares with the file size.
"""

from __future__ import annotations

import collections
import random

from swarmhub.engine.actions import Broadcast, Close, Send, Verify
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.settings import Settings
from swarmhub.wire import messages as m


class Network:
    """Nodes by name; a peer's handle in a core is the remote node's name.

    Messages arrive at once; data does not: each node uploads at most ``rate`` blocks
    per virtual second, shared round-robin among the peers whose requests it accepted.
    """

    def __init__(self, pieces: int, piece_length: int, settings: Settings,
                 rate: int = 64) -> None:
        self.pieces, self.piece_length, self.settings = pieces, piece_length, settings
        self.rate = rate
        self.nodes: dict[str, Swarm] = {}
        self.now = 0.0
        self.queue: collections.deque[tuple[str, str, m.Message]] = collections.deque()
        self.verify: collections.deque[tuple[str, int]] = collections.deque()

    def add(self, name: str, *, seed: bool, rng: random.Random) -> Swarm:
        have = b"\x01" * self.pieces if seed else None
        s = Swarm(self.pieces, self.piece_length, self.pieces * self.piece_length,
                  self.settings, rng=rng, now=self.now, have=have)
        self.nodes[name] = s
        return s

    def connect(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            self.nodes[x].connected(y, (y, 6881), y.encode().ljust(20, b"-"), fast=True,
                                    now=self.now)
        self.pump(a)
        self.pump(b)

    def pump(self, name: str) -> None:
        for action in self.nodes[name].take():
            match action:
                case Send(peer=peer, messages=msgs):
                    self.queue.extend((str(peer), name, msg) for msg in msgs)
                case Broadcast(peers=peers, messages=msgs):
                    self.queue.extend((str(p), name, msg) for p in peers for msg in msgs)
                case Verify(index=index):
                    self.verify.append((name, index))
                case Close(peer=peer):
                    self.nodes[name].disconnected(peer, self.now)
                    self.nodes[str(peer)].disconnected(name, self.now)
                case _:
                    pass  # Serve: uploads happen in upload(); Connect, Announce: none here

    def step(self) -> None:
        """Deliver every queued message and pass every hash check."""
        while self.queue or self.verify:
            while self.queue:
                dst, src, msg = self.queue.popleft()
                self.nodes[dst].message(src, msg, self.now)
                self.pump(dst)
            while self.verify:
                name, index = self.verify.popleft()
                self.nodes[name].piece_verified(index, True, self.now)
                self.pump(name)

    def upload(self) -> None:
        """One second of uploads: each node sends up to ``rate`` blocks, round-robin."""
        for name, core in self.nodes.items():
            budget = self.rate
            while budget:
                busy = [ps for ps in core.peers.values() if ps.incoming]
                if not busy:
                    break
                for ps in busy:
                    if not budget or not ps.incoming:
                        continue
                    req = ps.incoming.popleft()
                    budget -= 1
                    when = self.now + (self.rate - budget) / self.rate
                    down = str(ps.handle)
                    self.nodes[down].block(name, req.index, req.begin, req.length, when)
                    self.pump(down)
                    core.blocks_sent(down, (req,), req.length, when)
                    self.pump(name)
                self.step()

    def tick(self) -> None:
        self.upload()
        self.now += 1.0
        for name, core in self.nodes.items():
            core.tick(self.now)
            self.pump(name)
        self.step()


def run_swarm(leechers: int, pieces: int, *, super_seeding: bool, seed: int = 1,
              limit: float = 600.0) -> tuple[Network, float]:
    settings = Settings(super_seeding=super_seeding)
    net = Network(pieces, 4 * BLOCK_SIZE, settings)
    rng = random.Random(seed)
    net.add("seed", seed=True, rng=random.Random(rng.random()))
    names = [f"n{i}" for i in range(leechers)]
    for name in names:
        net.add(name, seed=False, rng=random.Random(rng.random()))
    for i, name in enumerate(names):
        net.connect("seed", name)
        for other in names[:i]:
            net.connect(name, other)
    net.step()
    while not all(net.nodes[n].complete for n in names) and net.now < limit:
        net.tick()
    return net, net.now


def test_a_swarm_of_cores_completes_in_memory() -> None:
    net, took = run_swarm(12, 48, super_seeding=False)
    assert all(core.complete for core in net.nodes.values()), took
    for core in net.nodes.values():
        core.picker.check_invariant()


def test_a_super_seeded_swarm_completes_and_leechers_trade() -> None:
    """Bandwidth is not modelled here (the seed is never the bottleneck), so this checks
    the protocol flow of super-seeding only; its upload savings are the lab's to show."""
    pieces = 64
    net, _took = run_swarm(12, pieces, super_seeding=True)
    assert all(core.complete for core in net.nodes.values())
    size = pieces * 4 * BLOCK_SIZE
    assert net.nodes["seed"].uploaded >= size
    assert sum(c.uploaded for n, c in net.nodes.items() if n != "seed") > 0


def test_forty_super_seeded_cores_complete() -> None:
    """40 peers x 64 pieces complete in memory. How fast is bench/simulate.py's to say
    (a wall-clock limit here failed only on loaded machines, never on a slow core)."""
    net, _ = run_swarm(40, 64, super_seeding=True)
    assert all(core.complete for core in net.nodes.values())
    for core in net.nodes.values():
        core.picker.check_invariant()
