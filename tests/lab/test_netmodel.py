"""The simulator's network model: max-min fairness, latency, slow start, wire sizes."""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import Any

import pytest

from swarmhub.lab.netmodel import (
    INIT_CWND,
    MAX_CWND,
    MIN_RTO,
    Event,
    EventQueue,
    Lane,
    Link,
    Network,
    Pipe,
    SlotQueue,
    heap_pop,
    heap_push,
    maxmin,
    slot_pop,
    slot_push,
    wire,
)

BIG = 1e12  # a flow cap that never binds


def _net() -> tuple[EventQueue, Network]:
    ev = EventQueue()
    return ev, Network(ev)


def _flow(net: Network, up: Link, down: Link, got: list[Any], *, latency: float = 0.0,
          cwnd: float = MAX_CWND) -> Pipe:
    pipe = Pipe(up, down, latency, got.append)
    pipe.cwnd = cwnd
    return pipe


def test_wire_bytes_count_every_segment_header() -> None:
    assert wire(1448) == 1514  # one full segment: what htb counts
    assert wire(16384 + 13) == 16397 + 12 * 66
    assert wire(5) == 71


def test_maxmin_reference_on_hand_computed_cases() -> None:
    # one link of 10 shared by two flows
    assert maxmin([10.0], [(BIG, [0]), (BIG, [0])]) == pytest.approx([5, 5])
    # a capped flow leaves its share to the other
    assert maxmin([10.0], [(2.0, [0]), (BIG, [0])]) == pytest.approx([2, 8])
    # uplink A=10 to B (downlink 2) and C (downlink 100): 2 and 8
    assert maxmin([10.0, 2.0, 100.0], [(BIG, [0, 1]), (BIG, [0, 2])]) == pytest.approx([2, 8])
    # B's downlink (3) also takes a flow from D: 1.5 each at B, A's other flow gets 8.5
    rates = maxmin([10.0, 3.0, 100.0, 100.0],
                   [(BIG, [0, 1]), (BIG, [0, 2]), (BIG, [3, 1])])
    assert rates == pytest.approx([1.5, 8.5, 1.5])


def _rates_now(net: Network, flows: list[tuple[Link, Link, float]]) -> list[float]:
    pipes = []
    for up, down, cap in flows:
        pipe = Pipe(up, down, 0.005, lambda _p: None)
        pipe.cwnd = cap * pipe.rtt
        net.send(pipe, 10**9, "x")
        pipes.append(pipe)
    return [p.rate for p in pipes]


def test_the_incremental_solver_matches_max_min_by_hand() -> None:
    _, net = _net()
    a_up, b_down, c_down, d_up = Link(10), Link(3), Link(100), Link(100)
    rates = _rates_now(net, [(a_up, b_down, BIG), (a_up, c_down, BIG), (d_up, b_down, BIG)])
    assert rates == pytest.approx([1.5, 8.5, 1.5], rel=1e-6)


def test_a_link_lists_its_active_flows_once_each_in_the_order_they_started() -> None:
    # The solver walks these lists in this order (the results depend on it), and a
    # stop must take out its own pipe, whatever its place.
    ev, net = _net()
    hub_up, hub_down = Link(1e6), Link(1e6)
    others = [Link(1e6) for _ in range(6)]
    pipes = [Pipe(hub_up, down, 0.001, lambda _p: None) for down in others]
    pipes.append(Pipe(hub_down, hub_down, 0.001, lambda _p: None))  # up is down
    for p in pipes:
        net.send(p, 10**9, "x")
    assert hub_up.flows == pipes[:6]
    assert hub_down.flows == [pipes[6]]
    for i in (3, 0, 5):
        net.close(pipes[i])
    assert hub_up.flows == [pipes[1], pipes[2], pipes[4]]
    assert [p.active for p in pipes] == [False, True, True, False, True, False, True]
    net.close(pipes[6])
    assert hub_down.flows == []
    net.send(pipes[0], 10**9, "x")  # restarts at the end
    assert hub_up.flows == [pipes[1], pipes[2], pipes[4], pipes[0]]
    assert others[0].flows == [pipes[0]] and others[3].flows == []
    ev.run(0.0)


@pytest.mark.parametrize("seed", range(8))
def test_the_incremental_solver_matches_progressive_filling(seed: int) -> None:
    """Random hosts and flows, started one by one: the rates after the last start equal
    the exact max-min allocation."""
    rng = random.Random(seed)
    hosts = 6
    caps = [rng.choice([5.0, 10.0, 20.0, 100.0]) for _ in range(2 * hosts)]  # ups, downs
    _, net = _net()
    links = [Link(c) for c in caps]
    flows = []
    for _ in range(rng.randrange(4, 14)):
        s, d = rng.sample(range(hosts), 2)
        cap = rng.choice([BIG, BIG, rng.uniform(0.5, 8.0)])
        flows.append((links[s], links[hosts + d], cap))
    got = _rates_now(net, flows)
    want = maxmin(caps, [(cap, [links.index(u), links.index(d)]) for u, d, cap in flows])
    assert got == pytest.approx(want, rel=1e-4)


def test_rates_are_re_solved_when_a_flow_stops() -> None:
    ev, net = _net()
    up, down = Link(15140.0), Link(1e9)  # 10 full segments per second
    got: list[Any] = []
    short = _flow(net, up, down, got)
    long = _flow(net, up, down, got)
    net.send(short, 1448 * 10, "short")  # 15140 wire bytes
    net.send(long, 1448 * 30, "long")  # 45420 wire bytes
    assert short.rate == long.rate == pytest.approx(7570.0)
    ev.run(100.0)
    # the short one ends at 2 s; then the long one has the link alone: 2 + 30280 / 15140
    assert got == ["short", "long"]
    assert long.idle_since == pytest.approx(4.0)


def test_an_item_arrives_one_latency_after_its_last_byte() -> None:
    ev, net = _net()
    up, down = Link(1000.0), Link(1e9)
    times: list[float] = []
    pipe = Pipe(up, down, 0.05, lambda _p: times.append(ev.now))
    pipe.cwnd = MAX_CWND
    net.send(pipe, 1448 * 4, "data")  # 4 segments: 6056 wire bytes
    net.send(pipe, 5, "behind")  # a small message queued behind data waits for it
    ev.run(100.0)
    assert times[0] == pytest.approx(6.056 + 0.05)
    assert times[1] == pytest.approx(6.056 + wire(5) / 1000 + 0.05)


def test_a_small_message_behind_queued_data_arrives_with_the_item_it_follows() -> None:
    ev, net = _net()
    up, down = Link(1000.0), Link(1e9)
    got: list[tuple[float, str]] = []
    pipe = Pipe(up, down, 0.05, lambda p: got.append((ev.now, p)))
    pipe.cwnd = MAX_CWND
    net.send(pipe, 1448 * 4, "head")  # being sent: never extended
    net.send_wire(pipe, 2 * wire(1448), "run", lambda p: got.append((ev.now, p)))
    net.send(pipe, 9, "have")  # rides with "run"
    net.send(pipe, 17, "request")  # and so does this, after it
    assert len(pipe.items) == 2 * 3  # two items (three slots each)
    ev.run(100.0)
    assert [p for _, p in got] == ["head", "run", "have", "request"]
    end = (6 * 1514 + wire(9) + wire(17)) / 1000 + 0.05
    assert [t for t, _ in got[1:]] == [pytest.approx(end)] * 3
    assert got[0][0] == pytest.approx(4 * 1514 / 1000 + 0.05)
    assert up.sent == 6 * 1514 + wire(9) + wire(17)  # every byte still on the wire
    assert pipe.queued == 0 and not pipe.active


def test_an_uplink_counts_what_its_connections_hold_unsent() -> None:
    """``Link.backlog``: what a host's uploads have written ahead (the simulator's upload
    turns read it), over the pipes that belong to a connection (an ``owner``): a web
    seed's pipe shares the link but is not the peer's to count."""
    ev, net = _net()
    up, down = Link(1000.0), Link(1e9)
    conn = Pipe(up, down, 0.01, lambda _p: None)
    conn.owner = "end"
    web = Pipe(up, down, 0.01, lambda _p: None)  # no owner
    net.send_wire(conn, 3000, "run", lambda _p: None)
    net.send_wire(conn, 2000, "run 2", lambda _p: None)
    net.send(conn, 9, "have")  # rides with "run 2"
    net.send_wire(web, 5000, "range", lambda _p: None)
    assert up.backlog == 5000 + wire(9) == conn.queued
    ev.run(6.5)  # "run" has left at 6 s (the two flows share the link: 500 B/s each)
    assert conn.queued == up.backlog == 2000 + wire(9)
    net.close(conn)
    assert up.backlog == 0 and web.queued > 0


def test_a_small_message_on_an_idle_pipe_takes_the_latency_only() -> None:
    ev, net = _net()
    times: list[float] = []
    pipe = Pipe(Link(10.0), Link(10.0), 0.01, lambda _p: times.append(ev.now))
    net.send(pipe, 17, "request")
    ev.run(1.0)
    assert times == [pytest.approx(0.01)]
    assert not pipe.active


def test_slow_start_doubles_the_window_each_rtt() -> None:
    """On a fast link a flow is window-bound: cap = cwnd / RTT, doubling per RTT."""
    ev, net = _net()
    pipe = Pipe(Link(1e12), Link(1e12), 0.05, lambda _p: None)
    net.send(pipe, 10**9, "x")
    rtt = pipe.rtt
    assert pipe.rate == pytest.approx(INIT_CWND / rtt)
    ev.run(3.5 * rtt)
    assert pipe.cwnd == pytest.approx(INIT_CWND * 8)
    assert pipe.rate == pytest.approx(INIT_CWND * 8 / rtt)
    ev.run(40 * rtt)
    assert pipe.cwnd == MAX_CWND  # the window stops at its maximum


def test_a_window_not_in_use_stops_growing() -> None:
    """Limited by the link to far below cwnd / RTT, the window stays put (cwnd validation)."""
    ev, net = _net()
    pipe = Pipe(Link(1000.0), Link(1e12), 0.05, lambda _p: None)
    net.send(pipe, 10**6, "x")
    ev.run(5.0)
    assert pipe.cwnd == INIT_CWND
    assert pipe.rate == pytest.approx(1000.0)


def _until_idle(ev: EventQueue, pipe: Pipe) -> None:
    for _ in range(100_000):
        if not pipe.active:
            return
        ev.run(ev.now + 0.001)
    raise AssertionError("the pipe never went idle")


def test_the_window_restarts_after_an_idle_spell() -> None:
    ev, net = _net()
    pipe = Pipe(Link(1e12), Link(1e12), 0.05, lambda _p: None)
    rto = MIN_RTO + pipe.rtt
    net.send(pipe, 10**7, "x")
    _until_idle(ev, pipe)
    assert pipe.cwnd > INIT_CWND and not pipe.active
    grown = pipe.cwnd
    ev.run(pipe.idle_since + rto * 0.5)  # shorter than the RTO: kept
    net.send(pipe, 10**5, "y")
    assert pipe.cwnd == grown
    _until_idle(ev, pipe)
    ev.run(pipe.idle_since + 1.5 * rto)  # one RTO idle: halved
    net.send(pipe, 10**5, "z")
    assert pipe.cwnd == grown / 2
    ev.run(ev.now + 5.0)
    ev.run(ev.now + 30 * rto)  # a long idle spell: back to the start
    net.send(pipe, 10**5, "z")
    assert pipe.cwnd == INIT_CWND


def test_a_flow_slowed_mid_item_finishes_when_its_bytes_are_sent() -> None:
    """Its rate fell after its completion was scheduled: the early event must not deliver
    the item (it comes back when due), and a later speed-up brings it forward again."""
    ev, net = _net()
    up = Link(1514.0)
    got: list[tuple[float, str]] = []
    a = Pipe(up, Link(1e9), 0.0, lambda p: got.append((ev.now, p)))
    b = Pipe(up, Link(1e9), 0.0, lambda p: got.append((ev.now, p)))
    a.cwnd = b.cwnd = MAX_CWND
    net.send(a, 1448 * 4, "a")  # 4 * 1514 wire bytes: 4 s alone
    ev.at(1.0, lambda _: net.send(b, 1448 * 2, "b"))  # halves a's rate for 4 s
    ev.run(100.0)
    # a: 1 s alone (1 segment), 3 segments at half rate would take 6 s, but b leaves
    # after sending 2 segments (at 5 s), by when a has sent 1 + 2: the last alone, 1 s
    assert got == [(pytest.approx(5.0), "b"), (pytest.approx(6.0), "a")]
    assert a.rate == 0.0 and not a.active


@pytest.mark.parametrize("seed", range(5))
def test_the_latency_lane_runs_events_in_the_order_one_heap_would(seed: int) -> None:
    # Events chain more events (some at the lane's delay, some at others, ties included);
    # the lane must not reorder anything against a queue without it.
    def trace(lane_delay: float | None) -> list[tuple[float, int]]:
        rng = random.Random(seed)
        ev = EventQueue(lane_delay=lane_delay)
        out: list[tuple[float, int]] = []
        budget = [3000]

        def fire(tag: int) -> None:
            out.append((ev.now, tag))
            for _ in range(rng.choice((0, 1, 2, 2))):
                if budget[0] <= 0:
                    return
                budget[0] -= 1
                delay = rng.choice((0.01, 0.01, 0.01, 0.0, 0.005, 0.02, 1.0))
                if rng.random() < 0.5:
                    ev.after(delay, fire, budget[0])
                else:
                    ev.at(ev.now + delay, fire, budget[0])

        for i in range(20):
            ev.at(rng.random() * 0.05, fire, -i)
        ev.run(50.0)
        return out

    plain = trace(None)
    assert len(plain) > 1000
    assert trace(0.01) == plain


class _Mirrored:
    """A SlotQueue and a heapq reference fed the same events (time, insertion number)."""

    def __init__(self, rate: float, window: int) -> None:
        self.q = SlotQueue(rate, window)
        self.ref: list[tuple[float, int]] = []
        self.seq = 0

    def push(self, when: float) -> None:
        self.q.push(Event(when, self.seq, print, None))
        heapq.heappush(self.ref, (when, self.seq))
        self.seq += 1


@pytest.mark.parametrize(("seed", "rate", "window"),
                         [(0, 8.0, 4), (1, 8.0, 16), (2, 64.0, 8), (3, 1.0, 2), (4, 1024.0, 4096)])
def test_the_slot_queue_pops_in_the_order_heapq_pops_time_and_insertion(
        seed: int, rate: float, window: int) -> None:
    # The loop's use of it: peek (which may move to the next slot), then take or push
    # more first (as a lane event that runs before it would: into the current slot, a
    # slot the peek moved past, the ring, or past the ring's reach into the heap);
    # times never before the last one taken. Ties in time (insertion order breaks them),
    # slots of many events, far timers, the queue run empty and refilled.
    rng = random.Random(seed)
    m = _Mirrored(rate, window)
    q, ref, push = m.q, m.ref, m.push
    got: list[tuple[float, int]] = []
    want: list[tuple[float, int]] = []
    now = 0.0

    for _ in range(6000):
        r = rng.random()
        if r < 0.42:
            head = q.first()
            assert (head is None) == (not ref)
            if head is not None:
                if rng.random() < 0.3:  # an event due before it runs first (the lane's)
                    push(now + (head.when - now) * rng.random())
                    continue
                q.take()
                got.append((head.when, head.seq))
                want.append(heapq.heappop(ref))
                now = head.when
            continue
        if r < 0.5:
            delay = 0.0
        elif r < 0.6:
            delay = float(rng.randrange(4)) / rate  # slot boundaries
        elif r < 0.7:
            delay = rng.choice((1.0, 2.5, 10.0, 0.5))  # timers, some past the ring
        elif r < 0.75:
            delay = rng.random() * 40 * window / rate
        else:
            delay = rng.random() * 3 / rate
        push(now + delay)
        assert len(q) == len(ref)
    while (head := q.pop()) is not None:
        got.append((head.when, head.seq))
        want.append(heapq.heappop(ref))
    assert not ref and len(q) == 0
    assert got == want
    assert len(got) > 2000


def test_the_slot_number_heap_pops_in_order() -> None:
    rng = random.Random(7)
    heap: list[int] = []
    ref: list[int] = []
    got, want = [], []
    for _ in range(3000):
        if ref and rng.random() < 0.45:
            got.append(slot_pop(heap))
            want.append(heapq.heappop(ref))
        else:
            n = rng.randrange(1 << 20)
            slot_push(heap, n)
            heapq.heappush(ref, n)
    while ref:
        got.append(slot_pop(heap))
        want.append(heapq.heappop(ref))
    assert got == want and not heap


def test_a_peek_past_empty_slots_does_not_gather_the_earlier_pushes_into_one_slot() -> None:
    # The connection storm: only the lane has events before the hosts' first ticks at
    # t=1.0; the loop peeks at a tick, the lane's event runs first and pushes events for
    # the slots in between. They must join their own slots, not the peeked tick slot's
    # sorted list (a list.insert each into a list that grew with N x events: sim10k-45),
    # and still come out in (time, insertion) order.
    m = _Mirrored(4096.0, 16384)
    q, ref, push = m.q, m.ref, m.push
    for _ in range(100):
        push(1.0)  # the ticks
    rng = random.Random(5)
    largest = 0
    for _ in range(3000):
        head = q.first()  # peeks at t=1.0 until an earlier event is pushed
        assert head is not None
        push(0.05 + 0.9 * rng.random())  # the lane ran first
        largest = max(largest, len(q._cur) - q._head)
    assert largest <= 100  # the current slot never held more than the ticks
    got = []
    while (head := q.pop()) is not None:
        got.append((head.when, head.seq))
    assert got == [heapq.heappop(ref) for _ in range(len(got))] and not ref


@pytest.mark.parametrize("seed", range(3))
def test_the_event_heap_pops_in_the_order_heapq_pops_time_and_insertion(seed: int) -> None:
    # pushes and pops interleaved, many ties in time (insertion order must break them)
    rng = random.Random(seed)
    heap: list[Event] = []
    ref: list[tuple[float, int]] = []
    got: list[tuple[float, int]] = []
    want: list[tuple[float, int]] = []
    for seq in range(4000):
        if heap and rng.random() < 0.45:
            e = heap_pop(heap)
            got.append((e.when, e.seq))
            want.append(heapq.heappop(ref))
        when = float(rng.randrange(50)) if rng.random() < 0.5 else rng.random() * 50
        heap_push(heap, Event(when, seq, print, None))
        heapq.heappush(ref, (when, seq))
    while heap:
        e = heap_pop(heap)
        got.append((e.when, e.seq))
        want.append(heapq.heappop(ref))
    assert not ref
    assert got == want


@pytest.mark.parametrize("seed", range(3))
def test_the_lane_is_a_fifo_across_its_compactions(seed: int) -> None:
    # appends and pops interleaved in bursts, so the list drops what was read many times
    # (at every head position), against a deque
    rng = random.Random(seed)
    lane, ref = Lane(), deque[Event]()
    made = 0
    for _ in range(300):
        for _ in range(rng.randrange(0, 40)):
            event = Event(float(made), made, print, None)
            made += 1
            lane.append(event)
            ref.append(event)
        for _ in range(rng.randrange(0, 40)):
            if not ref:
                assert lane.first() is None and len(lane) == 0
                break
            assert lane.first() is ref[0]
            assert lane.popleft() is ref.popleft()
        assert len(lane) == len(ref)
        assert len(lane._items) <= 2 * len(ref) + 64  # read events do not pile up
    assert made > 4000
