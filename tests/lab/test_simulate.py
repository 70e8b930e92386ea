"""``lab simulate``: simulated swarms complete, conserve bytes, reproduce, match the lab."""

from __future__ import annotations

import gc
import json
import random
import weakref
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from swarmhub.engine.allowedfast import allowed_fast_set
from swarmhub.lab.commands import register
from swarmhub.lab.simhosts import HostSpec, SimTracker, assign, churn_schedule, parse_classes
from swarmhub.lab.simrun import SimOptions, simulate
from swarmhub.lab.simservices import pex_wire_size
from swarmhub.lab.simulate import Simulation
from swarmhub.settings import Settings
from swarmhub.wire.extensions import PexMessage, encode_pex

MIB = 1 << 20


def _opts(peers: int, size: int = 4 * MIB, **kw: object) -> SimOptions:
    return SimOptions(peers=peers, size=size, up=[(20e6, 1.0)], down=[(100e6, 1.0)],
                      latency_s=0.01, **kw)  # type: ignore[arg-type]


def _times(res: object) -> list[float | None]:
    return [h.completion_s for h in res.hosts]  # type: ignore[attr-defined]


def test_a_small_p2p_swarm_completes_and_conserves_bytes() -> None:
    captured: list[Simulation] = []
    orig = Simulation.run

    def keep(self: Simulation, until: float) -> None:
        captured.append(self)
        orig(self, until)

    Simulation.run = keep  # type: ignore[method-assign]
    try:
        res = simulate("p2p", _opts(4))
    finally:
        Simulation.run = orig  # type: ignore[method-assign]
    sim = captured[0]
    assert res.ok and res.ratio is not None
    assert res.ratio >= 1.0  # nobody beats the bound
    for node in sim.clients:
        assert node.swarm is not None and node.swarm.complete
        node.swarm.picker.check_invariant()
        assert node.useful >= res.size  # every byte of the file, from some peer
    received = sum(n.got for n in sim.clients)
    given = sum(n.gave for n in sim.nodes)
    assert received == given  # every block that arrived was sent by someone, once
    assert sim.source.gave >= res.size  # the source sent at least one copy
    assert res.source_upload >= res.size  # link bytes include headers


def test_closed_connections_are_freed_during_the_run() -> None:
    # The collector is off during a run: a closed connection must not be kept alive by
    # its own reference cycles (End.far, Pipe.owner, Pipe.deliver) until the run ends.
    import gc

    from swarmhub.lab.netmodel import Event
    from swarmhub.lab.simulate import End

    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        # 60 peers dialling 50 each: many connections close as handshakes cross
        res = simulate("p2p", _opts(60, size=MIB, seed=3, piece_length=64 << 10))
        gc.unfreeze()  # the run froze what it made (get_objects leaves frozen ones out)
        ends = [o for o in gc.get_objects() if isinstance(o, End)]
    finally:
        if enabled:
            gc.enable()
    assert res.ok
    # An end still named by an event in flight (its arg) is held by that event only,
    # until it fires: the run can end within that latency (seed 3 ends 0.7 ms before
    # three remote closes since upload turns moved its timing).
    def in_flight(e: End) -> bool:
        return any(isinstance(r, Event) and r.arg is e for r in gc.get_referrers(e))

    # And a closed end whose far end is still open (its remote close is the event in
    # flight) is held by that far end until the close arrives.
    def far_open(e: End) -> bool:
        far = getattr(e, "far", None)
        return far is not None and bool(far.open)

    closed = [e for e in ends if not e.open and not in_flight(e) and not far_open(e)]
    assert ends and not closed  # open ones stay (the run is uncollected), closed ones went


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    a = simulate("p2p", _opts(6, seed=7))
    b = simulate("p2p", _opts(6, seed=7))
    c = simulate("p2p", _opts(6, seed=8))
    assert _times(a) == _times(b)
    assert a.source_upload == b.source_upload
    assert _times(a) != _times(c)


def test_client_server_takes_n_copies_through_the_source() -> None:
    """cs is the trivial case: N*F over the source's link, TCP/IP headers included."""
    res = simulate("cs", _opts(5, size=2 * MIB))
    assert res.ok and res.last_completion_s is not None
    wire_factor = 1514 / 1448
    want = 5 * 2 * MIB * 8 * wire_factor / 20e6
    assert res.last_completion_s == pytest.approx(want, rel=0.01)
    assert res.hub_http_bytes == 5 * 2 * MIB


def test_hybrid_completes_with_the_hub_as_seeder_and_web_seed() -> None:
    res = simulate("hybrid", _opts(4))
    assert res.ok
    assert res.hub_upload is not None and res.hub_upload >= res.size


def test_peers_joining_over_time_all_finish() -> None:
    res = simulate("p2p", _opts(12, join_rate=4.0))
    assert res.ok
    assert any("churn" in n for n in res.notes)


def test_a_source_that_leaves_after_one_copy_strands_what_it_sent_twice() -> None:
    """The source leaves once its peers received F bytes from it; the pieces it sent
    twice (super-seeding offers, end-game) are then missing from the swarm: a finding
    this option exists to show, reported as hosts not done, never as a crash."""
    captured: list[Simulation] = []
    orig = Simulation.run

    def keep(self: Simulation, until: float) -> None:
        captured.append(self)
        orig(self, until)

    Simulation.run = keep  # type: ignore[method-assign]
    try:
        res = simulate("p2p", _opts(12, seed_leaves_after_copy=True, timeout=60.0))
    finally:
        Simulation.run = orig  # type: ignore[method-assign]
    sim = captured[0]
    assert sim.source.gone and sim.source_left is not None
    assert any("left at" in n for n in res.notes)
    held = set()
    for node in sim.clients:
        assert node.swarm is not None
        held |= {i for i in range(sim.num_pieces) if node.swarm.have[i]}
    assert res.ok == (len(held) == sim.num_pieces)
    assert all(h.ok or "not done" in h.error for h in res.hosts)


def test_peers_leaving_are_reported_as_left_not_failed() -> None:
    res = simulate("p2p", _opts(12, leave_rate=0.5, seed=3))
    left = [h for h in res.hosts if h.killed]
    assert left and all("left" in h.error for h in left)
    assert all(h.ok or h.killed for h in res.hosts)


def test_heterogeneous_hosts_follow_their_classes() -> None:
    classes = parse_classes("20mbit:70%,5mbit:30%")
    assert classes == [(20e6, 0.7), (5e6, 0.3)]
    rates = assign(classes, 10, random.Random(1))
    assert sorted(rates) == [5e6] * 3 + [20e6] * 7
    res = simulate("p2p", SimOptions(peers=10, size=2 * MIB, up=classes,
                                     down=[(100e6, 1.0)], latency_s=0.01))
    assert res.ok
    assert res.up_bps == pytest.approx(0.7 * 20e6 + 0.3 * 5e6)


def test_rate_classes_are_checked() -> None:
    assert parse_classes("10mbit,20mbit") == [(10e6, 0.5), (20e6, 0.5)]
    with pytest.raises(ValueError, match="100%"):
        parse_classes("10mbit:70%,5mbit:70%")
    with pytest.raises(ValueError):
        parse_classes("fast:10%")


def test_churn_schedule_is_a_poisson_process() -> None:
    joins, lives = churn_schedule(2000, 10.0, 0.0, random.Random(2))
    assert joins[0] == 0.0 and joins == sorted(joins)
    assert joins[-1] / 1999 == pytest.approx(0.1, rel=0.1)  # mean gap 1/rate
    assert lives == [None] * 2000


def test_the_tracker_hands_out_live_peers_but_never_the_asker() -> None:
    tr = SimTracker(interval=2, min_interval=1, rng=random.Random(1))
    for i in range(100):
        tr.register((f"10.0.0.{i}", 6881), seeder=i == 0, now=0.0)
    peers = tr.pick(("10.0.0.5", 6881), False, 50, 1.0)
    assert len(peers) == len(set(peers)) == 50
    assert ("10.0.0.5", 6881) not in peers
    assert ("10.0.0.0", 6881) not in tr.pick(("10.0.0.0", 6881), True, 200, 1.0)
    tr.register(("10.0.0.1", 6881), seeder=False, now=10.0)  # the others expire (ttl 4 s)
    assert tr.pick(("10.0.0.9", 6881), False, 50, 10.0) == [("10.0.0.1", 6881)]


class _Scanning(SimTracker):
    """A tracker that always looks at every entry (as with announces out of order)."""

    def _expired(self, now: float) -> list[tuple[str, int]] | None:
        return None


@pytest.mark.parametrize("seed", range(6))
def test_a_short_announce_hands_out_what_the_full_scan_did(seed: int) -> None:
    """The shortcut past a short sample (the expired prefix of ``_seen``, then the rest
    of the list without a call per entry) picks the same peers, draws the same numbers
    and purges the same entries in the same order as the look at every entry, for
    seeders and leechers, through completions, stops, expiry and a permanent entry."""
    ops = random.Random(seed)
    fast = SimTracker(interval=2, min_interval=1, rng=random.Random(seed))
    slow = _Scanning(interval=2, min_interval=1, rng=random.Random(seed))
    for tr in (fast, slow):
        tr.register(("10.0.0.0", 6881), True, 0.0, permanent=True)
    shortcuts = purges = 0
    expired = fast._expired

    def counting(now: float) -> list[tuple[str, int]] | None:
        nonlocal shortcuts, purges
        dead = expired(now)
        shortcuts += dead is not None
        purges += bool(dead)
        return dead

    fast._expired = counting  # type: ignore[method-assign]
    now = 0.0
    picks = 0
    for _ in range(600):  # (a step past the ttl of 4 s expires most entries at once)
        now += ops.choice((2.5, 5.0)) if ops.random() < 0.01 else ops.choice((0.0, 0.001))
        addr = (f"10.0.{ops.randrange(3)}.{ops.randrange(1, 120)}", 6881)
        roll = ops.random()
        if roll < 0.05:
            for tr in (fast, slow):
                tr.remove(addr)
            continue
        # most entries seeders, so the sample falls short: over a quarter leechers (a
        # pass over the list) or fewer (the leechers sorted by position); a leecher's
        # sample falls short once entries expired
        seeder = roll < (0.6 if seed % 2 else 0.95)
        # (sometimes another entry asks: one the scan passes by, expired or not)
        asker = addr if ops.random() < 0.9 else (
            f"10.0.{ops.randrange(3)}.{ops.randrange(1, 120)}", 6881)
        for tr in (fast, slow):
            tr.register(addr, seeder, now)
        numwant = ops.choice((5, 50))
        got = fast.pick(asker, seeder, numwant, now)
        assert got == slow.pick(asker, seeder, numwant, now)
        picks += bool(got)
        assert fast._addrs == slow._addrs and fast.seeders == slow.seeders
        assert fast.rng.random() == slow.rng.random()
    assert picks > 300 and shortcuts > 10 and purges > 0


def test_a_seeders_announce_looks_at_a_sample_not_every_entry() -> None:
    """Late in a run most entries are seeders: a seeder's announce finds too few leechers
    in its sample, and must not then look at all N entries (O(N^2) a run)."""
    tr = SimTracker(interval=2, min_interval=1, rng=random.Random(1))
    for i in range(2000):
        tr.register((f"10.0.{i >> 8}.{i & 255}", 6881), i >= 10, 0.0)
    looked = 0
    live = tr._live

    def counting(addr: tuple[str, int], now: float) -> bool:
        nonlocal looked
        looked += 1
        return live(addr, now)

    tr._live = counting  # type: ignore[method-assign]
    got = tr.pick(("10.0.0.20", 6881), True, 50, 1.0)
    assert sorted(got) == sorted((f"10.0.0.{i}", 6881) for i in range(10))
    assert looked <= 2 * 50 + 8


def _connections_at(until: float, *, pex: bool) -> list[int]:
    """Connections per client at ``until`` in a p2p swarm of 12 whose tracker hands out
    one peer per announce (the next announce is due at 5 s)."""
    specs = [HostSpec(20e6, 100e6, 0.01) for _ in range(13)]
    sim = Simulation("p2p", specs, 32 * MIB, 32 * 1024, Settings(pex=pex),
                     rng=random.Random(1))
    sim.tracker.max_numwant = 1
    sim.run(until)
    return [len(n.ends) for n in sim.clients]


def test_peers_learn_more_peers_through_pex() -> None:
    """BEP 11 in the simulation, with the engine's PexPeer timing: nothing at first (the
    first message goes 2 s after the handshake), then each client dials the peers its
    neighbours report, as the real driver does."""
    early = _connections_at(1.5, pex=True)
    assert early == _connections_at(1.5, pex=False)  # no message before 2 s
    without = _connections_at(4.0, pex=False)
    with_pex = _connections_at(4.0, pex=True)
    assert sum(with_pex) > 2 * sum(without)
    assert all(a > b for a, b in zip(with_pex, without, strict=True))  # each learns some


def test_peers_queue_one_shared_tuple_per_address_learnt_through_pex() -> None:
    """Every peer's dialer may hold a thousand addresses, most learnt through PEX: equal
    addresses are one object across the run (at N=10,000 a tuple per message was
    ~60 KB per peer)."""
    specs = [HostSpec(20e6, 100e6, 0.01) for _ in range(41)]
    settings = Settings(pex=True, max_connections_per_torrent=6)  # full: candidates wait
    # seed 2: with upload turns at 32 KiB pieces (turns-31) seed 1's run queued each
    # address once by t=4 s, which tests nothing; seed 2 queues 34 for 30 addresses
    sim = Simulation("p2p", specs, 32 * MIB, 32 * 1024, settings, rng=random.Random(2))
    sim.tracker.max_numwant = 1
    sim.run(4.0)
    queued = [a for n in sim.clients if n.swarm is not None for a in n.swarm.dialer.candidates]
    by_addr: dict[tuple[str, int], set[int]] = {}
    for addr in queued:
        by_addr.setdefault(addr, set()).add(id(addr))
    assert len(queued) > len(by_addr)  # some address is queued by several peers
    assert all(len(ids) == 1 for ids in by_addr.values())


def _small_swarm(until: float) -> Simulation:
    specs = [HostSpec(20e6, 100e6, 0.01) for _ in range(9)]
    sim = Simulation("p2p", specs, 4 * MIB, 32 * 1024, Settings(), rng=random.Random(1))
    sim.run(until)
    return sim


def test_a_run_empties_its_queue_so_the_collector_frees_its_simulation() -> None:
    """Events are acyclic (the collector does not see through them) and hold the
    simulation's bound methods: a run stopped mid-way drops what it left queued, or its
    simulation, hosts and connections would never be freed."""
    sim = _small_swarm(0.5)
    assert len(sim.ev) == 0
    ref = weakref.ref(sim.on_event)  # (a native class takes no weak reference: a part)
    del sim
    gc.unfreeze()  # (a run freezes what it made: the next run would unfreeze it)
    gc.collect()
    assert ref() is None


def test_a_peer_that_dialled_us_is_known_by_its_listen_port_from_p() -> None:
    """As on a real network, a connection comes from an ephemeral port; the dialler's
    extension handshake (``p``) tells where it listens, and PEX tells that address."""
    sim = _small_swarm(1.0)
    incoming = 0
    for node in sim.nodes:
        assert node.swarm is not None
        for end in node.ends:
            ps = node.swarm.peer(end.uid)
            assert ps.listen_addr == end.remote.addr
            if not ps.outgoing:
                incoming += 1
                assert ps.addr[0] == end.remote.addr[0] and ps.addr[1] >= 32768
    assert incoming == sim.connections == 9 * 8 // 2


def test_each_host_has_a_24_of_its_own_so_allowed_fast_sets_differ() -> None:
    """BEP 6 derives a peer's allowed-fast set from its /24: hosts sharing one would all
    be granted the same pieces, which no real swarm spread over many networks does."""
    specs = [HostSpec(20e6, 100e6, 0.01) for _ in range(300)]
    sim = Simulation("p2p", specs, 32 * MIB, 256 * 1024, Settings(), rng=random.Random(1))
    nets = {node.addr[0].rsplit(".", 1)[0] for node in sim.nodes}
    assert len(nets) == len(sim.nodes) == 300
    sets = {tuple(allowed_fast_set(node.addr[0], b"\x01" * 20, 128, 5))
            for node in sim.nodes}
    assert len(sets) > 250  # (a shared /24 gives one set)


def test_each_pair_connects_once_in_a_small_swarm() -> None:
    """The tracker's answers every 2 s list peers that dialled us: knowing their listen
    addresses, nobody dials them again (without ``p``, 51 connections for 36 pairs: each
    redial found the duplicate and, by the lower-id rule, often replaced it)."""
    sim = _small_swarm(60.0)
    assert sim.pending == 0  # every client finished
    assert sim.connections == 9 * 8 // 2
    assert not sim.refusals


def test_the_tracker_counts_seeders_and_leechers_as_they_change() -> None:
    tr = SimTracker(interval=2, min_interval=1, rng=random.Random(1))
    for i in range(10):
        tr.register((f"10.0.0.{i}", 6881), seeder=i < 3, now=0.0)
    assert (tr.seeders, tr.leechers) == (3, 7)
    tr.register(("10.0.0.5", 6881), seeder=True, now=1.0)  # completed
    tr.register(("10.0.0.0", 6881), seeder=True, now=1.0)  # announced again
    tr.remove(("10.0.0.1", 6881))  # stopped
    tr.remove(("10.0.0.1", 6881))
    assert (tr.seeders, tr.leechers) == (3, 6)
    # ttl 4 s: each expired entry goes as the pick looks at it (the asker is not looked at)
    assert tr.pick(("10.0.0.0", 6881), False, 50, 10.0) == []
    assert (tr.seeders, tr.leechers) == (1, 0)


# Recorded on this machine kind (2 cores) with the netns lab and its NFQUEUE delay line:
# `swarmhub lab run --peers N --size 32MiB --up 20mbit --down 100mbit --latency 10ms
# --modes p2p`, re-recorded (median of 3) with the core that hands a not-interested
# peer's unchoke slot over at once and refills requests on Have (at 3760232, before that
# change: 16.4 and 17.1). Last completion, s.
# Re-recorded with the shared super-seeding budget (3 runs each, load 8-12: N=4 15.0/14.6/
# 15.4 s, N=8 16.4/16.2/16.2 s).
# Re-recorded with strict end-game, the decline grace, unused unchoke slots reused, and the
# lab's hosts on reno with 8-segment packets (3 runs each, load 3-7, only the lead's CI
# and helpers' simulators besides: N=4 14.9/14.9/14.7 s, N=8 15.6/15.4/15.8 s; 1.16x bound).
# Re-recorded with upload turns at 32 KiB pieces (turns-31; 3 runs each, load 2-10: N=4
# 14.5/14.5/14.5 s, N=8 14.7/14.7/14.7 s; c62d8bf, turns off at 32 KiB, the same: 14.5/14.5,
# 14.7/14.7).
LAB_LAST_S = {4: 14.5, 8: 14.7}


@pytest.mark.parametrize("n", [4, 8])
def test_fidelity_against_a_recorded_netns_lab_run(n: int) -> None:
    """Within 10% of the real lab on the same settings. This proves agreement with those
    recorded runs, not with today's lab: a core change that moves the lab must re-record
    (bench/simulate.py prints both)."""
    res = simulate("p2p", _opts(n, size=32 * MIB))
    assert res.last_completion_s is not None
    assert res.last_completion_s == pytest.approx(LAB_LAST_S[n], rel=0.10)


#: The same at 256 KiB pieces (`--piece-size 256KiB`, p2p only), where upload turns hand
#: each peer in turn a whole piece (simmodel-41, df35bf6, load 1-2: N=8 16.8/16.2/15.8 s,
#: N=4 14.8/14.8 s). The simulator asked the core's grants at every item that left, not at
#: the driver's look-again point: N=8 14.9 s (-8 %). The lab again with the six-block
#: least upload budget (scale-42, load 4-19): N=8 16.0/16.1/16.0 s, N=4 14.6/14.7 s.
LAB_LAST_S_256K = {4: 14.8, 8: 16.2}
#: How close: issue 8's 10 %. N=4 holds 5 %; N=8 is 14.8 s since the least upload budget
#: is six blocks (-8.5 %): the simulator no longer idles the source where four blocks let
#: one peer's request queue hold the whole budget (the real driver escaped that by its
#: timer's lateness), and what keeps the lab at 16 s at N=8 is not in the model.
FIDELITY_256K = {4: 0.05, 8: 0.10}


@pytest.mark.parametrize("n", [4, 8])
def test_fidelity_at_256_kib_pieces(n: int) -> None:
    """Within :data:`FIDELITY_256K` of the recorded lab runs at 256 KiB pieces."""
    res = simulate("p2p", _opts(n, size=32 * MIB, piece_length=256 * 1024))
    assert res.last_completion_s is not None
    assert res.last_completion_s == pytest.approx(LAB_LAST_S_256K[n], rel=FIDELITY_256K[n])


def test_cli_simulate_writes_the_lab_report(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "lab", "simulate", "--peers", "3", "--size", "1MiB", "--modes", "cs,p2p,hybrid",
        "--up", "20mbit:50%,10mbit:50%", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [r["mode"] for r in data] == ["cs", "p2p", "hybrid"]
    assert all(r["ok"] and r["client"] == "simulated" for r in data)
    html = (out / "report.html").read_text()
    assert "simulation" in html and "data:image/png;base64" in html
    bad = CliRunner().invoke(app, ["lab", "simulate", "--peers", "20000", "--out", str(out)])
    assert bad.exit_code != 0


def test_cli_simulate_takes_the_engine_settings_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the peers of ``lab run`` do: ``SWARMHUB_UPLOAD_AHEAD=0.05 lab simulate`` ran
    with the defaults."""
    import swarmhub.lab.simrun as simrun

    seen: list[Settings] = []

    def capture(mode: str, opts: SimOptions, *args: object, **kw: object) -> None:
        seen.append(opts.settings)
        raise RuntimeError("captured")

    monkeypatch.setattr(simrun, "simulate", capture)
    monkeypatch.setenv("SWARMHUB_UPLOAD_AHEAD", "0.05")
    app = typer.Typer()
    register(app)
    CliRunner().invoke(app, ["lab", "simulate", "--peers", "3", "--size", "1MiB",
                             "--modes", "p2p", "--out", str(tmp_path / "r")])
    assert seen and seen[0].upload_ahead == 0.05


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pex_size_is_counted_as_the_encoder_would_write_it(seed: int) -> None:
    """The simulator counts a ut_pex message's bytes without encoding it: the count must
    be the encoder's, for IPv4 peers (counted) and with an IPv6 one (encoded)."""
    rng = random.Random(seed)

    def addrs(n: int) -> list[tuple[str, int]]:
        return [(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                 rng.randrange(1, 65536)) for _ in range(n)]

    for _ in range(300):
        added = addrs(rng.choice([0, 1, 2, 16, 17, 50, rng.randrange(200)]))
        dropped = addrs(rng.choice([0, 1, 2, 16, 17, 50, rng.randrange(200)]))
        flags = [rng.randrange(256) for _ in added] if rng.random() < 0.9 else []
        msg = PexMessage(added=added, dropped=dropped, added_flags=flags)
        assert pex_wire_size(msg) == 6 + len(encode_pex(msg))
    msg = PexMessage(added=[("2001:db8::1", 6881), ("10.0.0.1", 1)], added_flags=[0, 16])
    assert pex_wire_size(msg) == 6 + len(encode_pex(msg))


def test_a_run_freezes_what_it_made_and_the_next_run_unfreezes_it() -> None:
    # After a run the collector resumes with the run's objects frozen (no collection
    # walks them); the next run hands them back to the collector as it starts.
    import gc

    from swarmhub.lab.simulate import End

    enabled = gc.isenabled()
    try:
        gc.enable()
        res = simulate("p2p", _opts(8, size=MIB, seed=1, piece_length=64 << 10))
        assert res.ok and gc.isenabled()  # the collector is back on, as it was
        assert gc.get_freeze_count() > 0
        # the run's connection ends are out of the collector's sight
        assert not any(isinstance(o, End) for o in gc.get_objects())
        gc.disable()
        during: list[int] = []
        res2 = simulate("p2p", _opts(8, size=MIB, seed=2, piece_length=64 << 10),
                        lambda _e: during.append(gc.get_freeze_count()))
        assert res2.ok and not gc.isenabled()  # left off, as it was
        # while the second run ran, nothing was frozen: it unfroze the first's objects
        assert len(during) == 8 and set(during) == {0}
        assert gc.get_freeze_count() > 0  # and froze its own at its end
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()
