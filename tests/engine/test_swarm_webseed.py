"""The swarm core's web-seed policy and simultaneous-dial rule, on a stepped clock.

Hybrid must never be the slow choice (issue 9): alone (the tracker counts no other
leecher) the web seed starts at once and takes anything; with leechers it waits for the
peers and takes small runs of what they lack; the pieces it fetches are left to it by the
peers. Two peers that dial each other keep exactly one connection, the same on both ends.
"""

from __future__ import annotations

import itertools

import pytest
from test_swarm import PIECE, QUIET, join, make_swarm, sent

from swarmhub.engine.actions import Action, Close, Connect, Send
from swarmhub.engine.swarm import Swarm
from swarmhub.wire import messages as m

MiB = 1 << 20


def _tracker(s: Swarm, now: float, *, seeds: int, leechers: int) -> None:
    s.tracker_response(now, interval=1800, peers=[], seeds=seeds, leechers=leechers)
    s.take()


def test_alone_per_the_tracker_the_web_seed_starts_before_the_grace_and_takes_anything() -> None:
    s = make_swarm(pieces=8, trackers=True, settings=QUIET.replace(web_seed_grace=5.0))
    assert s.webseed_batch(0.0, set()) == []  # nothing known yet: peers first
    _tracker(s, 0.01, seeds=1, leechers=1)  # the hub's seeder, and us
    assert s.webseed_ready(0.01)
    assert s.webseed_batch(0.01, set()) == list(range(8))
    assert s.webseed_why == "alone"  # for the driver's log


def test_the_hubs_counts_before_our_announce_start_a_lone_web_seed_at_once() -> None:
    """A hub's file info says who is in the swarm before our announce is answered: alone,
    the web seed starts without waiting for the answer; with another leecher it waits as
    before; the tracker's own answer, once here, decides."""
    s = make_swarm(pieces=8, trackers=True, settings=QUIET.replace(web_seed_grace=5.0))
    s.tracker_counts(1, 0)  # the hub's seeder, no other leecher
    assert s.webseed_ready(0.0)
    assert s.webseed_batch(0.0, set()) == list(range(8))
    crowded = make_swarm(pieces=8, trackers=True, settings=QUIET.replace(web_seed_grace=5.0))
    crowded.tracker_counts(1, 1)
    assert not crowded.webseed_ready(0.0) and crowded.webseed_batch(0.0, set()) == []
    _tracker(crowded, 0.01, seeds=1, leechers=1)  # the other one left: the answer decides
    assert crowded.webseed_ready(0.01)
    crowded.tracker_counts(1, 3)  # later counts do not override the tracker's answer
    assert crowded.webseed_ready(0.01)


def test_with_other_leechers_the_web_seed_waits_then_fills_what_the_swarm_lacks() -> None:
    s = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(s, 0.01, seeds=0, leechers=5)
    assert not s.webseed_ready(0.01) and s.webseed_batch(0.01, set()) == []
    join(s, "a", 0.02)
    s.message("a", m.Bitfield(m.bitfield_from_bools([i < 8 for i in range(16)])), 0.02)
    s.take()
    batch = s.webseed_batch(1.0, set())  # past the grace; peers not stalled (< 2 s)
    assert batch and set(batch) <= set(range(8, 16))  # only what no peer has
    assert batch == list(range(batch[0], batch[0] + len(batch)))  # one run: few ranges
    assert s.webseed_why == "no connected peer has them (the tracker counts 0 seeds)"


def test_with_leechers_and_no_peer_connected_yet_the_web_seed_waits_for_a_stall() -> None:
    """A crowd's client that has not connected to anyone yet (its announce answered, its
    dials under way) has no "what the swarm lacks": it takes nothing over HTTP before
    the stall rule (2 s), and the ordinary rule once a peer is connected."""
    s = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(s, 0.01, seeds=0, leechers=31)
    assert s.webseed_batch(1.0, set()) == []  # past the grace, nobody connected
    join(s, "a", 1.5)
    s.message("a", m.Bitfield(m.bitfield_from_bools([i < 8 for i in range(16)])), 1.5)
    s.take()
    batch = s.webseed_batch(1.6, set())
    assert batch and set(batch) <= set(range(8, 16))
    nobody = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(nobody, 0.01, seeds=0, leechers=31)
    stalled = nobody.webseed_batch(2.5, set())  # nobody for 2 s: the stall rule
    assert 0 < len(stalled) <= MiB // PIECE


def test_a_hidden_seed_keeps_the_web_seed_off_until_the_peers_stall() -> None:
    """The hub's super-seeding peer shows pieces one by one: a piece no peer shows may
    still come from it, so with leechers around the web seed waits for a stall."""
    s = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(s, 0.01, seeds=1, leechers=5)
    join(s, "hub", 0.02)
    join(s, "b", 0.02)
    s.take()
    assert s.webseed_batch(1.0, set()) == []
    stalled = s.webseed_batch(2.5, set())  # no block from any peer for 2 s
    assert 0 < len(stalled) <= MiB // PIECE
    assert s.webseed_why == "no block from peers for 2.5 s"


def test_news_of_pieces_from_the_peers_keeps_the_web_seed_off_while_the_swarm_moves() -> None:
    """A client still waiting for its first unchoke in a large swarm sees Haves: the swarm
    moves, and the origin's HTTP (shared by every client) is left alone. Once neither a
    block nor a Have came for 2 s, the swarm is stuck and the web seed may fetch."""
    s = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(s, 0.01, seeds=1, leechers=200)
    join(s, "hub", 0.02)
    join(s, "b", 0.02)
    s.take()
    for k, t in enumerate((1.0, 2.0, 3.0, 4.0)):  # a new piece announced every second
        s.message("b", m.Have(k), t)
        s.take()
        assert s.webseed_batch(t + 0.9, set()) == []  # no block for > 2 s, but news
    s.message("b", m.Have(0), 5.0)  # a piece it announced already: no news
    s.take()
    assert s.webseed_batch(5.9, set()) == []
    stalled = s.webseed_batch(6.0, set())  # neither a block nor news for 2 s
    assert 0 < len(stalled) <= MiB // PIECE


def test_with_the_origins_peer_connected_a_quiet_swarm_waits_for_it_not_for_http() -> None:
    """The hub's own peer and its web seed share one uplink: while that peer is connected
    (it super-seeds, and hands us pieces when its turn comes), a swarm that is merely quiet
    (no block, no news for 2 s: the start of a crowd's download) takes nothing over HTTP,
    which would only take the place of that peer's first copies. Starved (10 s without a
    block) it does; and without the origin's peer the 2 s rule holds as before."""
    s = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    s.webseed_origin([HUB_IP])
    _tracker(s, 0.01, seeds=1, leechers=32)
    s.connected("hub", (HUB_IP, 6881), b"-SH0100-hubhubhubhub", fast=True, now=0.02)
    join(s, "b", 0.02)
    s.take()
    for t in (2.5, 5.0, 9.9):  # quiet for more than 2 s: still the hub's peer's turn
        assert s.webseed_batch(t, set()) == []
    starved = s.webseed_batch(10.1, set())  # 10 s without a block from anyone
    assert 0 < len(starved) <= MiB // PIECE
    gone = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    gone.webseed_origin([HUB_IP])
    _tracker(gone, 0.01, seeds=1, leechers=32)
    gone.connected("hub", (HUB_IP, 6881), b"-SH0100-hubhubhubhub", fast=True, now=0.02)
    join(gone, "b", 0.02)
    gone.disconnected("hub", 0.03)
    gone.take()
    assert 0 < len(gone.webseed_batch(2.5, set())) <= MiB // PIECE  # no origin peer: 2 s


def test_news_without_blocks_keeps_the_web_seed_off_for_10_s_at_most() -> None:
    """Peers that announce pieces but never unchoke us do not starve us of the web seed."""
    s = make_swarm(pieces=64, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(s, 0.01, seeds=1, leechers=200)
    join(s, "hub", 0.02)
    join(s, "b", 0.02)
    s.take()
    for k in range(10):  # a new piece announced every second, never a block
        s.message("b", m.Have(k), 0.5 + k)
        s.take()
        assert s.webseed_batch(0.9 + k, set()) == []
    assert s.webseed_batch(10.1, set())  # 10 s without a block despite the news


def test_pieces_the_web_seed_fetches_are_left_to_it_until_released() -> None:
    s = make_swarm(pieces=64, trackers=True)
    _tracker(s, 0.01, seeds=1, leechers=1)
    batch = s.webseed_batch(0.01, set())
    assert batch == list(range(MiB // PIECE))  # the first batch: 1 MiB
    join(s, "seed", 0.02, has_all=True)
    s.message("seed", m.Unchoke(), 0.02)
    asked = {r.index for r in sent(s.take(), "seed", m.Request) if isinstance(r, m.Request)}
    assert asked and not asked & set(batch)
    s.webseed_piece(batch[0], PIECE, 0.1)
    assert s.have[batch[0]] and s.webseed_bytes == PIECE
    s.webseed_release(0.2)  # the rest was not delivered: back to the peers' pool
    assert not any(s.picker.in_progress(i) and i not in asked for i in batch[1:])


def test_alone_and_faster_the_web_seed_takes_back_what_a_peer_sent_nothing_of() -> None:
    big = QUIET.replace(web_seed_batch_bytes=64 * PIECE)
    s = make_swarm(pieces=64, trackers=True, settings=big)
    _tracker(s, 0.0, seeds=1, leechers=1)
    first = s.webseed_batch(0.0, set())
    join(s, "seed", 0.0, has_all=True)
    s.message("seed", m.Unchoke(), 0.0)
    asked = [r for r in sent(s.take(), "seed", m.Request) if isinstance(r, m.Request)]
    for i in first:
        s.webseed_piece(i, PIECE, 0.01)
    s.webseed_release(0.01)  # 1 MiB in 10 ms: far faster than the silent peer
    s.take()
    second = s.webseed_batch(0.01, set())
    taken = {r.index for r in asked} & set(second)
    assert taken  # pieces the peer was asked for but sent nothing of
    cancels = {c.index for c in sent(s.take(), "seed", m.Cancel) if isinstance(c, m.Cancel)}
    assert taken <= cancels


# -- alone with the origin's own peer: the web seed takes the file ------------------------

HUB_IP = "10.9.9.9"


def _alone_with_hub(settings: object = None) -> Swarm:
    """Alone per the tracker (the hub's seeder and us), the web seed at HUB_IP, and the
    hub's peer (HaveAll here, for brevity) connected and unchoking us."""
    s = make_swarm(pieces=64, trackers=True,
                   settings=QUIET.replace(web_seed_batch_bytes=16 * PIECE))
    s.webseed_origin([HUB_IP])
    _tracker(s, 0.0, seeds=1, leechers=1)
    s.connected("hub", (HUB_IP, 6881), b"-SH0100-hubhubhubhub", fast=True, now=0.0)
    s.message("hub", m.HaveAll(), 0.0)
    s.message("hub", m.Unchoke(), 0.0)
    return s


def _asked(s: Swarm, peer: str) -> set[int]:
    return {r.index for r in sent(s.take(), peer, m.Request) if isinstance(r, m.Request)}


def _deliver(s: Swarm, batch: list[int], now: float) -> None:
    for i in batch:
        s.webseed_piece(i, PIECE, now)


def test_a_batch_taken_alone_is_cut_once_we_are_not_and_only_such_a_batch() -> None:
    """The first of a crowd reads "alone" in the hub's file info and starts its web seed
    at once; when the tracker's answer counts the others (or one connects), the batch is
    cut (its rest goes back to the peers): the origin's uplink is for the swarm's first
    copies. A batch taken with leechers around (what they lack) is never cut."""
    s = make_swarm(pieces=64, trackers=True)
    s.tracker_counts(1, 0)  # the hub's file info: its seeder, nobody else yet
    assert s.webseed_batch(0.0, set(), source="a")
    assert not s.webseed_cut("a")  # alone: it runs on
    _tracker(s, 0.05, seeds=1, leechers=6)  # our announce's answer: five others coming
    assert s.webseed_cut("a")
    s.webseed_release(0.06, source="a")
    assert not s.webseed_cut("a")  # released: nothing left to cut
    joined = make_swarm(pieces=64, trackers=True)
    joined.webseed_origin([HUB_IP], 0.0)
    joined.tracker_response(0.0, interval=1800, peers=[(HUB_IP, 6881)], seeds=1, leechers=1)
    joined.take()
    assert joined.webseed_batch(0.0, set(), source="a")
    joined.tick(0.05)  # the hub's peer is held undialled while its web seed serves us
    # the hub's peer dials us (its tracker round): a super-seed looks like a leecher, but
    # one at the web seed's host is the origin's own: still alone
    joined.connected("hub", (HUB_IP, 40000), b"-SH0100-hubhubhubhub", fast=True, now=0.1)
    joined.message("hub", m.HaveNone(), 0.1)
    assert not joined.webseed_cut("a")
    join(joined, "leecher", 0.2)  # no tracker news, but another leecher connected
    assert joined.webseed_cut("a")
    crowd = make_swarm(pieces=16, trackers=True, settings=QUIET.replace(web_seed_grace=0.5))
    _tracker(crowd, 0.0, seeds=0, leechers=5)
    join(crowd, "a", 0.0)
    crowd.message("a", m.Bitfield(m.bitfield_from_bools([i < 8 for i in range(16)])), 0.0)
    crowd.take()
    assert crowd.webseed_batch(1.0, set(), source="b")  # what no peer has, past the grace
    assert not crowd.webseed_cut("b")


def test_alone_the_origins_peer_is_left_idle_while_its_web_seed_serves() -> None:
    s = _alone_with_hub()
    early = _asked(s, "hub")  # before the web seed starts, the peer is asked as usual
    first = s.webseed_batch(0.0, set())
    assert early & set(first)  # the first pieces: the peer was asked for some of them
    cancels = {c.index for c in sent(s.take(), "hub", m.Cancel) if isinstance(c, m.Cancel)}
    assert cancels == early & set(first)  # taken back: it had sent nothing of them
    join(s, "other-seed", 0.0, has_all=True)  # a seed elsewhere: another uplink, used
    s.message("other-seed", m.Unchoke(), 0.0)
    assert _asked(s, "other-seed")
    for k in range(1, 6):  # the web seed delivers steadily: the hub's peer stays idle
        now = 0.1 * k
        s.tick(now)
        assert _asked(s, "hub") == set()


def test_a_web_seed_about_to_start_keeps_the_origins_peer_idle_for_a_second_at_most(
) -> None:
    """The hub's peer is dialled at the tracker's answer, which also lets the web seed
    start: registered with ``now`` the web seed counts as healthy until its first batch,
    so the peer is not asked for the first pieces meanwhile; if no batch comes within a
    second, the peer is asked at the next tick."""
    s = make_swarm(pieces=64, trackers=True,
                   settings=QUIET.replace(web_seed_batch_bytes=16 * PIECE))
    s.webseed_origin([HUB_IP], 0.0)
    _tracker(s, 0.01, seeds=1, leechers=1)
    s.connected("hub", (HUB_IP, 6881), b"-SH0100-hubhubhubhub", fast=True, now=0.02)
    s.message("hub", m.HaveAll(), 0.02)
    s.message("hub", m.Unchoke(), 0.02)
    assert _asked(s, "hub") == set()
    s.tick(0.5)
    assert _asked(s, "hub") == set()
    s.tick(1.5)  # no batch came: the peer is asked
    assert _asked(s, "hub")


def test_a_tracker_answer_listing_only_the_origins_peer_lets_the_web_seed_start_at_once(
) -> None:
    """Alone with the origin's own peer there is nobody to wait for; with a peer elsewhere
    (another leecher may be about to connect) the driver keeps its pause."""
    s = make_swarm(pieces=8, trackers=True, settings=QUIET.replace(web_seed_grace=5.0))
    s.webseed_origin([HUB_IP], 0.0)
    assert not s.webseed_origin_only(0.0)  # no answer yet
    s.tracker_response(0.01, interval=1800, peers=[(HUB_IP, 6881)], seeds=1, leechers=1)
    assert s.webseed_origin_only(0.01)
    s.tracker_response(0.02, interval=1800, peers=[(HUB_IP, 6881), ("10.1.1.1", 6881)],
                       seeds=1, leechers=1)
    assert not s.webseed_origin_only(0.02)  # a seed elsewhere too
    s.tracker_response(0.03, interval=1800, peers=[(HUB_IP, 6881)], seeds=1, leechers=3)
    assert not s.webseed_origin_only(0.03)  # not alone: the grace for peers holds
    t = make_swarm(pieces=8, trackers=True, settings=QUIET.replace(web_seed_grace=5.0))
    t.tracker_response(0.01, interval=1800, peers=[(HUB_IP, 6881)], seeds=1, leechers=1)
    assert not t.webseed_origin_only(0.01)  # no web seed at that host


def _dials(s: Swarm) -> list[tuple[str, int]]:
    return [a.addr for a in s.take() if isinstance(a, Connect)]


HUB_PEER = (HUB_IP, 6881)


def _alone_origin_listed(now: float = 0.01) -> Swarm:
    """Alone per the tracker, whose answer lists only the origin's own peer, with the web
    seed about to start (registered at 0.0): the case of one ``get`` from a hub."""
    s = make_swarm(pieces=64, trackers=True,
                   settings=QUIET.replace(web_seed_batch_bytes=16 * PIECE))
    s.webseed_origin([HUB_IP], 0.0)
    s.tracker_response(now, interval=1800, peers=[HUB_PEER], seeds=1, leechers=1)
    return s


def test_alone_the_origins_peer_is_not_even_dialled_while_its_web_seed_serves() -> None:
    """A lone downloader leaves the origin's peer idle (above); dialling it cost both
    sides a handshake, bitfields and bookkeeping for nothing. It stays queued: another
    leecher in the tracker's answer brings the dial at the next tick."""
    s = _alone_origin_listed()
    assert _dials(s) == []
    for k in range(1, 6):  # the web seed delivers steadily: still not dialled
        now = 0.1 * k
        _deliver(s, s.webseed_batch(now, set())[:4], now)
        s.tick(now)
        assert _dials(s) == []
    s.tracker_counts(1, 1)  # ignored: the tracker answered
    s.tick(0.6)
    assert _dials(s) == []
    s.tracker_response(0.7, interval=1800, peers=[], seeds=1, leechers=2)
    assert _dials(s) == [HUB_PEER]  # someone to trade with: the swarm as usual


def test_a_leecher_connecting_to_a_lone_downloader_has_the_origins_peer_dialled() -> None:
    s = _alone_origin_listed()
    assert _dials(s) == []
    join(s, "newcomer", 0.1)  # dialled us before the tracker told us of it
    s.tick(0.2)
    assert _dials(s) == [HUB_PEER]


def test_a_peer_elsewhere_is_dialled_at_once_and_the_origins_when_the_web_seed_fails(
) -> None:
    s = _alone_origin_listed()
    assert _dials(s) == []
    s.add_peers([("10.1.1.1", 6881)], 0.02)  # another host: another uplink, dialled
    assert _dials(s) == [("10.1.1.1", 6881)]
    s.webseed_batch(0.03, set(), source="a")
    s.take()
    s.webseed_release(0.05, source="a", failed=True)  # a dead (or lying, banned) web seed
    assert _dials(s) == [HUB_PEER]  # at once, not at the next tick


def test_a_stalled_web_seed_has_the_origins_peer_dialled_at_the_next_tick() -> None:
    s = _alone_origin_listed()
    s.webseed_batch(0.02, set())  # in flight, and then nothing arrives
    s.tick(0.5)
    assert _dials(s) == []
    s.tick(1.5)  # no piece for over a second
    assert _dials(s) == [HUB_PEER]


def test_without_a_web_seed_at_its_host_the_only_listed_peer_is_dialled_at_once() -> None:
    s = make_swarm(pieces=8, trackers=True)
    s.tracker_response(0.01, interval=1800, peers=[HUB_PEER], seeds=1, leechers=1)
    assert _dials(s) == [HUB_PEER]


def test_only_what_the_origins_peer_alone_was_asked_for_is_taken_back() -> None:
    s = _alone_with_hub()
    join(s, "far", 0.0, has_all=True)  # a seed with its own uplink, asked too
    s.message("far", m.Unchoke(), 0.0)
    hub, far = _asked(s, "hub"), _asked(s, "far")
    first = set(s.webseed_batch(0.0, set()))
    actions = s.take()
    assert not sent(actions, "far", m.Cancel) and not far & first  # its requests stand
    cancels = {c.index for c in sent(actions, "hub", m.Cancel) if isinstance(c, m.Cancel)}
    assert cancels == (hub - far) & first and cancels


def test_alone_and_preferred_the_web_seeds_batch_grows_past_the_setting() -> None:
    s = _alone_with_hub()
    first = s.webseed_batch(0.0, set())
    _deliver(s, first, 0.01)
    s.webseed_release(0.01)  # 32 pieces in 10 ms: a fast origin
    s.take()
    second = s.webseed_batch(0.01, set())
    assert len(second) > 16  # more than web_seed_batch_bytes: nobody cuts it short
    assert second == list(range(second[0], second[0] + len(second)))  # one long range


def test_a_tracker_answer_listing_only_the_origin_lets_the_batch_grow_before_its_dial(
) -> None:
    """The second batch is asked for at the first one's last byte, often before the dial
    of the origin's peer (listed by the tracker) completed: it grows as with that peer
    connected; a peer elsewhere in the answer keeps it at the setting."""
    def second_batch(peers: list[tuple[str, int]]) -> list[int]:
        s = make_swarm(pieces=64, trackers=True,
                       settings=QUIET.replace(web_seed_batch_bytes=16 * PIECE))
        s.webseed_origin([HUB_IP], 0.0)
        s.tracker_response(0.0, interval=1800, peers=peers, seeds=1, leechers=1)
        s.take()
        first = s.webseed_batch(0.0, set(), source="a")
        s.webseed_arrived(0.01, len(first) * PIECE, source="a")  # 16 pieces in 10 ms
        return s.webseed_batch(0.01, set(first), source="b")

    assert len(second_batch([(HUB_IP, 6881)])) > 16
    assert len(second_batch([(HUB_IP, 6881), ("10.1.1.1", 6881)])) == 16


def test_the_hubs_counts_of_nobody_else_let_the_second_batch_grow_before_the_answer(
) -> None:
    """The hub's file info (no other leecher, its own seeder) stands for a tracker answer
    listing only the origin's peer until the answer comes: the second batch grows at
    once; another seed counted keeps it at the setting."""
    def second_batch(seeds: int) -> list[int]:
        s = make_swarm(pieces=64, trackers=True,
                       settings=QUIET.replace(web_seed_batch_bytes=16 * PIECE))
        s.tracker_counts(seeds, 0)
        s.webseed_origin([HUB_IP], 0.0)
        first = s.webseed_batch(0.0, set(), source="a")
        s.webseed_arrived(0.01, len(first) * PIECE, source="a")  # 16 pieces in 10 ms
        return s.webseed_batch(0.01, set(first), source="b")

    assert len(second_batch(1)) > 16
    assert len(second_batch(2)) == 16


def test_a_batch_that_arrived_sets_the_rate_and_stays_reserved_until_released() -> None:
    """The driver asks for the next batch once the bodies of the last one arrived, before
    they are hashed: the rate counts their arrival (our hashing is not the web seed's
    speed), and their pieces stay the web seed's until that batch is released."""
    s = _alone_with_hub()
    size = s.settings.web_seed_request_size
    first = s.webseed_batch(0.0, set(), source="a")
    s.webseed_arrived(0.01, len(first) * PIECE, source="a")
    rate = len(first) * PIECE / 0.01
    assert s.webseed_request_bytes() == max(size, int(rate * 0.5)) > size
    second = s.webseed_batch(0.01, set(first), source="b")
    assert second and not set(first) & set(second)
    s.message("hub", m.Choke(), 0.02)
    s.message("hub", m.Unchoke(), 0.02)
    _tracker(s, 0.02, seeds=1, leechers=2)  # not alone: the hub's peer is asked again
    s.tick(0.03)
    assert not _asked(s, "hub") & (set(first) | set(second))  # both batches still held
    _deliver(s, first[:-1], 0.04)  # the last piece of the first batch failed its check
    s.webseed_release(0.04, source="a")
    assert s._ws_rate == rate  # measured at the arrival, not again at the release
    assert s.webseed_request_bytes() == size  # not alone any more
    s.tick(0.05)
    assert first[-1] in _asked(s, "hub") and not _asked(s, "hub") & set(second)
    s.webseed_release(0.05, source="b")
    assert s._ws_batch == {}  # nothing kept per batch


def test_another_leecher_brings_the_origins_peer_back_at_the_next_tick() -> None:
    s = _alone_with_hub()
    _deliver(s, s.webseed_batch(0.0, set()), 0.05)
    s.take()
    s.tick(0.1)
    assert _asked(s, "hub") == set()
    _tracker(s, 0.2, seeds=1, leechers=2)  # someone to trade with: peers first again
    s.tick(0.3)
    assert _asked(s, "hub")


def test_a_failed_web_seed_gives_the_origins_peer_its_requests_at_once() -> None:
    s = _alone_with_hub()
    batch = s.webseed_batch(0.0, set())
    _deliver(s, batch[:2], 0.05)
    s.take()
    s.tick(0.1)
    assert _asked(s, "hub") == set()
    s.webseed_release(0.1, failed=True)
    assert _asked(s, "hub")  # no wait for the tick


def test_a_stalled_web_seed_gives_the_origins_peer_its_requests_at_the_next_tick() -> None:
    s = _alone_with_hub()
    s.webseed_batch(0.0, set())  # in flight, and then nothing arrives
    s.take()
    s.tick(0.5)
    assert _asked(s, "hub") == set()
    s.tick(1.5)  # no piece for over a second: the peer is asked for the rest
    assert _asked(s, "hub")


def test_between_batches_the_origins_peer_stays_idle() -> None:
    s = _alone_with_hub()
    batch = s.webseed_batch(0.0, set())
    _deliver(s, batch, 0.05)
    s.take()
    s.webseed_release(0.05)  # done: the driver asks for its next batch right away
    assert _asked(s, "hub") == set()
    s.tick(2.0)  # but not forever if none comes
    assert _asked(s, "hub")


def test_alone_the_web_seeds_ranges_grow_with_its_rate_and_shrink_back_with_leechers(
) -> None:
    """Alone, a range holds about half a second of the web seed's rate (one long range,
    not one per ``web_seed_request_size``); with another leecher the setting's size."""
    s = _alone_with_hub()
    size = s.settings.web_seed_request_size
    assert s.webseed_request_bytes() == size  # no rate measured yet
    first = s.webseed_batch(0.0, set())
    _deliver(s, first, 0.01)
    s.webseed_release(0.01)  # len(first) pieces in 10 ms
    rate = len(first) * PIECE / 0.01
    assert s.webseed_request_bytes() == max(size, int(rate * 0.5)) > size
    _tracker(s, 0.02, seeds=1, leechers=2)
    assert s.webseed_request_bytes() == size


def _alone_with_hiding_seeds() -> Swarm:
    """Alone per the tracker, with two super-seeds that show us no piece: the origin's
    (at HUB_IP) and one elsewhere; both look like leechers, both lack what we get."""
    s = make_swarm(pieces=64, trackers=True,
                   settings=QUIET.replace(web_seed_batch_bytes=16 * PIECE))
    s.webseed_origin([HUB_IP])
    _tracker(s, 0.0, seeds=2, leechers=1)
    s.connected("hub", (HUB_IP, 6881), b"-SH0100-hubhubhubhub", fast=True, now=0.0)
    join(s, "far", 0.0)
    s.take()
    return s


def _haves(actions: list[Action], peer: str) -> list[int]:
    return [h.index for h in sent(actions, peer, m.Have) if isinstance(h, m.Have)]


def test_alone_the_origins_idle_peer_gets_its_haves_at_the_next_tick_in_one_batch() -> None:
    s = _alone_with_hiding_seeds()
    batch = s.webseed_batch(0.0, set())
    for k, i in enumerate(batch[:3]):
        s.webseed_piece(i, PIECE, 0.01 * (k + 1))
    actions = s.take()
    assert _haves(actions, "far") == batch[:3]  # another uplink: told at once
    assert _haves(actions, "hub") == []  # the origin's idle peer: held back
    s.tick(0.5)
    held = [a for a in s.take() if isinstance(a, Send) and a.peer == "hub"
            and any(isinstance(x, m.Have) for x in a.messages)]
    assert len(held) == 1 and [h.index for h in held[0].messages
                               if isinstance(h, m.Have)] == batch[:3]
    s.tick(1.0)
    assert _haves(s.take(), "hub") == []  # each Have once


def test_with_another_leecher_new_haves_go_at_once_and_the_held_ones_at_the_tick() -> None:
    s = _alone_with_hiding_seeds()
    first = s.webseed_batch(0.0, set())
    _deliver(s, first[:2], 0.01)
    s.take()
    _tracker(s, 0.02, seeds=2, leechers=3)  # others to trade with: no longer idle
    _deliver(s, first[2:4], 0.03)
    assert _haves(s.take(), "hub") == first[2:4]  # the new ones at once
    s.tick(0.5)
    assert _haves(s.take(), "hub") == first[:2]  # the held ones at the tick


def test_completion_leaves_the_held_haves_to_the_next_tick() -> None:
    """A thousand Haves at the very end kept the hub busy while the client's last
    announces waited for it; a client that stays (seeds) sends them at its next tick."""
    s = _alone_with_hiding_seeds()
    now = 0.0
    while not s.complete:  # the whole file from the web seed, batch by batch
        batch = s.webseed_batch(now, set())
        now += 0.01
        _deliver(s, batch, now)
        s.webseed_release(now)
    assert _haves(s.take(), "hub") == []
    s.tick(now + 0.5)
    assert sorted(_haves(s.take(), "hub")) == list(range(64))  # each piece once


# -- two peers dial each other at once ------------------------------------------------------

LOW, HIGH = b"-SH0100-" + b"\x00" * 12, b"-SH0100-" + b"\xff" * 12


def _admit(s: Swarm, handle: str, remote: bytes, local: bytes, outgoing: bool) -> None:
    reason = s.can_accept(("10.0.0.9", 6881), remote, 0.0, outgoing=outgoing, local_id=local)
    if reason is None:
        s.connected(handle, ("10.0.0.9", 6881), remote, fast=True, now=0.0, outgoing=outgoing)
    for a in s.take():
        if isinstance(a, Close):
            s.disconnected(a.peer, 0.0)


@pytest.mark.parametrize(("low_first", "high_first"),
                         list(itertools.product(["mine", "theirs"], repeat=2)))
def test_two_peers_that_dial_each_other_keep_the_one_the_lower_id_opened(
        low_first: str, high_first: str) -> None:
    """Whatever order each end finishes the two handshakes in, both keep connection
    ``L`` (opened by the lower id) and drop ``H``: exactly one connection survives."""
    low, high = make_swarm(), make_swarm()
    # On the low end, L is outgoing and H incoming; on the high end the reverse.
    steps_low = [("L", True), ("H", False)]
    steps_high = [("H", True), ("L", False)]
    if low_first == "theirs":
        steps_low.reverse()
    if high_first == "theirs":
        steps_high.reverse()
    for handle, outgoing in steps_low:
        _admit(low, handle, HIGH, LOW, outgoing)
    for handle, outgoing in steps_high:
        _admit(high, handle, LOW, HIGH, outgoing)
    assert set(low.peers) == {"L"} and set(high.peers) == {"L"}


def test_without_a_direction_a_second_connection_is_refused_as_before() -> None:
    s = make_swarm()
    join(s, "a")
    assert s.can_accept(("10.0.1.99", 1), b"a".ljust(20, b"-"), 0.0) is not None



async def test_a_web_seed_url_with_an_address_needs_no_resolver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub URL often names its host by address: the origin is known at once, with no
    hop to the resolver's thread before the first batch (a hostname still resolves)."""
    import asyncio
    from types import SimpleNamespace

    from swarmhub.engine.webseed_driver import WebSeedDriver

    s = make_swarm(pieces=8, trackers=True)
    host = SimpleNamespace(swarm=s, clock=lambda: 0.0)
    driver = WebSeedDriver(host, None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    looked_up: list[str] = []

    async def getaddrinfo(name: str, *args: object, **kw: object) -> list[tuple[object, ...]]:
        looked_up.append(name)
        return [(0, 0, 0, "", ("10.0.0.7", 0))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    await driver._origin("http://127.0.0.1:8080/f/abc/file.bin")
    await driver._origin("http://[::1]:8080/f/abc/file.bin")
    assert looked_up == [] and s._ws_origins == {"127.0.0.1", "::1"}
    await driver._origin("http://hub.example:8080/f/abc/file.bin")
    assert looked_up == ["hub.example"] and "10.0.0.7" in s._ws_origins
