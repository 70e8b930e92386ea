"""choose_unchoked: tit-for-tat, optimistic rotation, seeding round-robin, exclusions."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from swarmhub.engine.choker import ChokeDecision, ChokerSettings, PeerStats, choose_unchoked

LEECH = ChokerSettings(slots=4, optimistic_interval=30.0, seeding=False)
SEED = ChokerSettings(slots=4, optimistic_interval=30.0, seeding=True, seed_turn=30.0)


def peer(
    name: str,
    down: float = 0.0,
    up: float = 0.0,
    *,
    interested: bool = True,
    seed: bool = False,
    snubbed: bool = False,
    connected_at: float = -1000.0,
) -> PeerStats:
    return PeerStats(name, interested, down, up, seed, snubbed, connected_at)


def test_tit_for_tat_unchokes_the_fastest_uploaders_to_us() -> None:
    stats = [peer(f"p{i}", down=i * 1000.0) for i in range(10)]
    d = choose_unchoked(stats, 0.0, LEECH, random.Random(1))
    regular = d.unchoked - {d.optimistic}
    assert regular == {"p9", "p8", "p7", "p6"}
    assert d.optimistic is not None and d.optimistic not in regular
    assert len(d.unchoked) == 5


def test_uninterested_snubbed_and_seeds_are_never_unchoked() -> None:
    stats = [
        peer("fast-seed", down=9e9, seed=True),
        peer("snubbed", down=8e9, snubbed=True),
        peer("bored", down=7e9, interested=False),
        peer("a", down=10.0),
        peer("b", down=5.0),
    ]
    for seed in range(20):
        rng = random.Random(seed)
        d = choose_unchoked(stats, 0.0, LEECH, rng)
        assert d.unchoked == {"a", "b"} and d.optimistic is None
        s = choose_unchoked(stats, 0.0, SEED, rng)
        assert "fast-seed" not in s.unchoked and "bored" not in s.unchoked


def test_equal_rates_keep_the_peers_already_unchoked() -> None:
    stats = [peer(f"p{i}") for i in range(12)]
    rng = random.Random(5)
    d = choose_unchoked(stats, 0.0, LEECH, rng)
    regular = d.unchoked - {d.optimistic}
    for t in range(1, 6):
        d = choose_unchoked(stats, t * 10.0, LEECH, rng, d)
        assert regular <= d.unchoked


def test_optimistic_rotates_after_the_interval_and_not_before() -> None:
    stats = [peer(f"p{i}", down=100.0 * i) for i in range(10)]
    rng = random.Random(2)
    d = choose_unchoked(stats, 0.0, LEECH, rng)
    first = d.optimistic
    assert first is not None
    for t in (10.0, 20.0, 29.9):
        d = choose_unchoked(stats, t, LEECH, rng, d)
        assert d.optimistic == first and d.optimistic_since == 0.0
    d = choose_unchoked(stats, 30.0, LEECH, rng, d)
    assert d.optimistic is not None and d.optimistic != first
    assert d.optimistic_since == 30.0
    seen = {first}
    for k in range(2, 40):
        d = choose_unchoked(stats, 30.0 * k, LEECH, rng, d)
        seen.add(d.optimistic)
    assert seen == {f"p{i}" for i in range(6)}  # every choked peer got its chance


def test_optimistic_replaced_when_it_leaves_or_gets_a_regular_slot() -> None:
    stats = [peer(f"p{i}", down=100.0 * i) for i in range(8)]
    rng = random.Random(3)
    d = choose_unchoked(stats, 0.0, LEECH, rng)
    gone = d.optimistic
    d2 = choose_unchoked([s for s in stats if s.peer != gone], 5.0, LEECH, rng, d)
    assert d2.optimistic not in (None, gone) and d2.optimistic_since == 5.0
    promoted = [peer(s.peer, down=1e9) if s.peer == gone else s for s in stats]
    d3 = choose_unchoked(promoted, 5.0, LEECH, rng, d)
    assert gone in d3.unchoked and d3.optimistic != gone


def test_new_peers_get_three_times_the_optimistic_weight() -> None:
    now = 1000.0
    stats = [peer(f"old{i}", connected_at=0.0) for i in range(5)]
    stats += [peer(f"new{i}", connected_at=now - 5) for i in range(5)]
    settings = ChokerSettings(slots=0 + 1, optimistic_interval=30.0)
    wins: Counter[str] = Counter()
    rng = random.Random(11)
    for _ in range(4000):
        d = choose_unchoked(stats, now, settings, rng)
        assert d.optimistic is not None
        wins["new" if str(d.optimistic).startswith("new") else "old"] += 1
    ratio = wins["new"] / wins["old"]
    assert 2.3 < ratio < 3.9, wins


def test_seeding_round_robin_gives_everyone_turns() -> None:
    stats = [peer(f"p{i}", up=0.0) for i in range(10)]
    rng = random.Random(4)
    d: ChokeDecision | None = None
    rounds: dict[str, list[int]] = {f"p{i}": [] for i in range(10)}
    for r in range(30):  # 300 s of rechokes every 10 s
        d = choose_unchoked(stats, r * 10.0, SEED, rng, d)
        for p in d.unchoked - {d.optimistic}:
            rounds[str(p)].append(r)
    counts = [len(v) for v in rounds.values()]
    assert sum(counts) == 4 * 30
    # 10 peers, 4 slots, 3-round turns: everyone is served within 3 turns (9 rounds)
    # and waits at most 2 turns (6 rounds) between turns
    for name, served in rounds.items():
        assert served and served[0] < 9, (name, served)
        gaps = [b - a for a, b in itertools.pairwise(served)]
        assert max(gaps) <= 7, (name, served)
    assert max(counts) - min(counts) <= 6, rounds


def test_seeding_turns_last_the_turn_length() -> None:
    stats = [peer(f"p{i}") for i in range(8)]
    rng = random.Random(9)
    d = choose_unchoked(stats, 0.0, SEED, rng)
    first = d.unchoked - {d.optimistic}
    d = choose_unchoked(stats, 10.0, SEED, rng, d)
    d = choose_unchoked(stats, 20.0, SEED, rng, d)
    assert first <= d.unchoked  # mid-turn
    d = choose_unchoked(stats, 30.0, SEED, rng, d)
    assert (d.unchoked - {d.optimistic}).isdisjoint(first)  # the other four in line


def test_seeding_prefers_peers_we_uploaded_least_to() -> None:
    stats = [peer(f"p{i}", up=1000.0 * i) for i in range(8)]
    d = choose_unchoked(stats, 0.0, SEED, random.Random(1))
    assert d.unchoked - {d.optimistic} == {"p0", "p1", "p2", "p3"}


def test_no_peers_and_zero_slots() -> None:
    d = choose_unchoked([], 0.0, LEECH, random.Random(0))
    assert d.unchoked == frozenset() and d.optimistic is None
    stats = [peer("a", down=5.0)]
    d = choose_unchoked(stats, 0.0, ChokerSettings(slots=0), random.Random(0))
    assert d.unchoked == frozenset()


def test_decision_memory_forgets_departed_peers() -> None:
    stats = [peer(f"p{i}") for i in range(6)]
    rng = random.Random(0)
    d = choose_unchoked(stats, 0.0, SEED, rng)
    d = choose_unchoked(stats[:2], 10.0, SEED, rng, d)
    assert set(d.turns) <= {"p0", "p1"}
