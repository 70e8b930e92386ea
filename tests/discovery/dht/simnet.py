"""An in-memory network of DhtCores with a stepped clock (no sockets, no real time)."""

from __future__ import annotations

import random

from swarmhub.discovery.dht.core import Config, DhtCore, LookupDone
from swarmhub.discovery.dht.nodeid import random_id

Addr = tuple[str, int]


def addr_of(i: int) -> Addr:
    return (f"127.0.{i // 250}.{i % 250 + 1}", 6881)


class SimNet:
    def __init__(self, n: int, *, seed: int = 1, config: Config | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.dead: set[Addr] = set()
        self.sent = 0
        self.cores: dict[Addr, DhtCore] = {}
        for i in range(n):
            a = addr_of(i)
            self.cores[a] = DhtCore(random_id(self.rng), random.Random(seed * 1000 + i),
                                    self.now, config=config,
                                    bootstrap=[addr_of(0)] if i else [], own_addr=a)
        self.events: dict[Addr, list[LookupDone]] = {a: [] for a in self.cores}

    def deliver(self, rounds: int = 100) -> None:
        """Pass datagrams around until nobody has anything to send (bounded)."""
        for _ in range(rounds):
            moved = False
            for src, core in self.cores.items():
                for data, dst in core.take_datagrams():
                    moved = True
                    self.sent += 1
                    if dst in self.cores and dst not in self.dead and src not in self.dead:
                        self.cores[dst].receive(data, src, self.now)
                self.events[src].extend(core.take_events())
            if not moved:
                return
        raise AssertionError("the network did not settle")

    def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            for core in self.cores.values():
                core.tick(self.now)
            self.deliver()

    def bootstrap_all(self) -> None:
        for a, core in self.cores.items():
            if a != addr_of(0):
                core.bootstrap(self.now)
                self.deliver()
        self.advance(2.0)
