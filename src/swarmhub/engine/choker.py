"""Who may download from us: the choker (pure, sans-IO).

Like libtorrent's ``unchoke_sort``, one function ranks snapshots of the peers and
returns a decision; unlike it, nothing reaches into connections or reads a global
clock: the engine passes frozen :class:`PeerStats`, ``now``, a ``random.Random`` and the
previous :class:`ChokeDecision`, which carries all the memory the choker needs.

* Leeching — tit-for-tat (BEP 3): the ``slots`` interested peers that upload to us the
  fastest are unchoked; snubbed peers (no data for a long while) are left out. Ties keep
  whoever was unchoked already, so equal rates do not cause churn.
* Seeding — round-robin: download rates mean nothing when we have everything, so every
  interested peer gets a *turn* of ``seed_turn`` seconds, least recently served first,
  and among those the peers we uploaded least to (libtorrent's seeding choker). Nobody
  waits more than about ``ceil(peers / slots)`` turns.
* Both — one optimistic unchoke on top of the slots, among the choked interested peers,
  rotated every ``optimistic_interval`` seconds and never before; peers connected within
  ``new_peer_window`` get 3x the weight, as in the original BitTorrent, because they have
  nothing to trade yet.

Seeds are never unchoked (they download nothing).
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ChokeDecision", "ChokerSettings", "PeerStats", "choose_unchoked"]


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A snapshot of one connected peer, as the choker sees it."""

    peer: Hashable
    #: the peer wants data from us
    interested: bool
    #: bytes/s the peer sends us
    download_rate: float
    #: bytes/s we send the peer
    upload_rate: float
    #: the peer has every piece
    is_seed: bool
    #: the peer has not sent us requested data for a long while
    snubbed: bool
    #: when the connection was made (the engine's clock)
    connected_at: float

    # Spelt out: the dataclass keeps it, and mypyc compiles it (the generated one stays
    # interpreted; one snapshot per peer per rechoke). See swarmhub.engine.actions.
    def __init__(self, peer: Hashable, interested: bool, download_rate: float,
                 upload_rate: float, is_seed: bool, snubbed: bool,
                 connected_at: float) -> None:
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "interested", interested)
        object.__setattr__(self, "download_rate", download_rate)
        object.__setattr__(self, "upload_rate", upload_rate)
        object.__setattr__(self, "is_seed", is_seed)
        object.__setattr__(self, "snubbed", snubbed)
        object.__setattr__(self, "connected_at", connected_at)


@dataclass(frozen=True, slots=True)
class ChokerSettings:
    """Knobs of :func:`choose_unchoked`."""

    #: regular unchoke slots (the optimistic unchoke comes on top)
    slots: int = 4
    #: seconds an optimistic unchoke lasts before it rotates
    optimistic_interval: float = 30.0
    #: we have the whole torrent: round-robin instead of tit-for-tat
    seeding: bool = False
    #: seconds a seeding turn lasts before the slot goes to the next peer in line
    seed_turn: float = 30.0
    #: peers connected less than this many seconds ago get 3x optimistic weight
    new_peer_window: float = 60.0


@dataclass(frozen=True, slots=True)
class ChokeDecision:
    """The outcome of one rechoke: send Unchoke to ``unchoked``, Choke to everyone else.

    ``unchoked`` includes ``optimistic``. ``turns`` maps each peer to when its latest
    regular unchoke began; it is the choker's memory for round-robin, pass the decision
    back in as ``previous``.
    """

    unchoked: frozenset[Hashable]
    optimistic: Hashable | None
    optimistic_since: float
    turns: Mapping[Hashable, float] = field(default_factory=dict, compare=False, hash=False)

    def __init__(self, unchoked: frozenset[Hashable], optimistic: Hashable | None,
                 optimistic_since: float, turns: Mapping[Hashable, float] | None = None) -> None:
        # Spelled out (the frozen-dataclass idiom, as engine/actions.py): the generated
        # __init__ stays interpreted under mypyc, ~6,200 instructions a decision, made
        # each time an unchoked peer loses interest (8,006 at lab simulate p2p N=64).
        object.__setattr__(self, "unchoked", unchoked)
        object.__setattr__(self, "optimistic", optimistic)
        object.__setattr__(self, "optimistic_since", optimistic_since)
        object.__setattr__(self, "turns", {} if turns is None else turns)


def _regular_leeching(
    eligible: list[PeerStats], slots: int, previous: frozenset[Hashable], rng: random.Random
) -> list[Hashable]:
    ranked = sorted(
        eligible, key=lambda s: (-s.download_rate, s.peer not in previous, rng.random())
    )
    return [s.peer for s in ranked[:slots]]


def _regular_seeding(
    eligible: list[PeerStats],
    slots: int,
    previous: frozenset[Hashable],
    turns: Mapping[Hashable, float],
    now: float,
    turn_length: float,
    rng: random.Random,
) -> list[Hashable]:
    def key(s: PeerStats) -> tuple[int, float, float, float]:
        started = turns.get(s.peer, -math.inf)
        if s.peer in previous and now - started < turn_length:
            return (0, started, 0.0, 0.0)  # mid-turn: keep the slot
        return (1, started, s.upload_rate, rng.random())

    return [s.peer for s in sorted(eligible, key=key)[:slots]]


def choose_unchoked(
    stats: Sequence[PeerStats],
    now: float,
    settings: ChokerSettings,
    rng: random.Random,
    previous: ChokeDecision | None = None,
) -> ChokeDecision:
    """Decide which peers to unchoke now; see the module docstring for the rules."""
    slots = max(0, settings.slots)
    if previous is not None:
        prev_regular = previous.unchoked - {previous.optimistic}
        prev_turns = previous.turns
    else:
        prev_regular, prev_turns = frozenset(), {}
    if settings.seeding:
        eligible = [s for s in stats if s.interested and not s.is_seed]
        regular = _regular_seeding(
            eligible, slots, prev_regular, prev_turns, now, settings.seed_turn, rng
        )
    else:
        eligible = [s for s in stats if s.interested and not s.is_seed and not s.snubbed]
        regular = _regular_leeching(eligible, slots, prev_regular, rng)

    present = {s.peer for s in stats}
    turns = {p: t for p, t in prev_turns.items() if p in present}
    for p in regular:
        if p not in prev_regular or p not in turns:
            turns[p] = now

    chosen = set(regular)
    candidates = [s for s in eligible if s.peer not in chosen] if slots else []
    optimistic: Hashable | None = None
    since = now
    prev_opt = previous.optimistic if previous is not None else None
    if (
        previous is not None
        and prev_opt is not None
        and now - previous.optimistic_since < settings.optimistic_interval
        and any(s.peer == prev_opt for s in candidates)
    ):
        optimistic, since = prev_opt, previous.optimistic_since
    elif candidates:
        pool = [s for s in candidates if s.peer != prev_opt] or candidates
        weights = [3 if now - s.connected_at < settings.new_peer_window else 1 for s in pool]
        optimistic = rng.choices(pool, weights)[0].peer
    if optimistic is not None:
        chosen.add(optimistic)
    return ChokeDecision(frozenset(chosen), optimistic, since, turns)
