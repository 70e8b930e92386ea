"""The simulator's network: a fluid model of TCP flows over shaped access links.

Why fluid: a swarm of 10,000 peers moves millions of 16 KiB blocks; simulating packets
would cost hours, while between two events every flow drains at a constant rate, so a
block's completion time is ``bytes left / rate``. Rates change only when a flow starts,
stops or its window grows, and are then re-solved.

The model (what the netns lab has, in a form cheap enough for thousands of hosts):

- Each host has an uplink and a downlink (:class:`Link`) with a capacity in wire bytes/s
  (htb counts Ethernet frames: a 1448-byte segment costs 1514 bytes, see :func:`wire`).
- Each direction of a connection is a :class:`Pipe`: a FIFO of items (messages, blocks)
  drained by one flow. Rates are **max-min fair** over all links: a flow gets the
  largest rate such that no flow on a saturated link gets more unless another gets
  less. It is solved incrementally (:meth:`Network.settle`): each link's *water level*
  is recomputed from its flows' demands, and links whose level moved wake their
  flows' other ends, until nothing moves (Jacobi iteration on the levels; its fixpoint
  is the max-min allocation, checked against :func:`maxmin` in the tests).
- A flow's own cap is ``cwnd / RTT``: TCP slow start from 10 segments, doubling each RTT
  while the window limits it (Linux's cwnd validation: at least half of it in use), up
  to a 4 MiB window; after an idle spell longer than the RTO the window halves per RTO
  down to the initial window (``tcp_slow_start_after_idle``).
- An item arrives one-way latency after its last byte left. Small messages on an idle
  pipe (a Have, a batch of requests) skip the fluid model: they take latency plus their
  serialisation time and no share of the link, so control traffic does not churn the
  rates; behind data they wait in the FIFO (head-of-line blocking, as in TCP), riding
  with the item they follow (one event for both; its size grows by theirs).
- A flow's completion event stays in the queue when its rate falls (it comes back when
  due); only a rate that rose schedules a new one: fewer stale events, same times.

Everything runs on the caller's :class:`EventQueue`; nothing reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast, final

from swarmhub._records import mypyc_attr

__all__ = [
    "INIT_CWND",
    "MAX_CWND",
    "MSS",
    "OVERHEAD",
    "Event",
    "EventQueue",
    "Lane",
    "Link",
    "Network",
    "Pipe",
    "SlotQueue",
    "heap_pop",
    "heap_push",
    "maxmin",
    "wire",
]

# Final: mypyc inlines or keeps these in C statics (a plain module global is a dict
# lookup by name at every use, and they are read per item, per flow and per event).
MSS: Final = 1448
#: Ethernet + IPv4 + TCP + timestamp option bytes per segment (what htb counts).
OVERHEAD: Final = 66
INIT_CWND: Final = 10 * (MSS + OVERHEAD)
MAX_CWND: Final = 4 * 1024 * 1024
MIN_RTO: Final = 0.2
#: Items at most this big skip the fluid model when their pipe is idle.
SMALL: Final = 2048
_INF: Final = math.inf


def _together(items: list[tuple[Callable[[Any], None], Any]]) -> None:
    """Deliver items that travel as one (in their order)."""
    for fn, payload in items:
        fn(payload)


def wire(payload: int) -> int:
    """Bytes on the wire (what htb shapes) for ``payload`` bytes of TCP payload."""
    return payload + -(-payload // MSS) * OVERHEAD


@final
@mypyc_attr(acyclic=True)
class Event:
    """``fn(arg)`` due at virtual time ``when``; ``seq`` (the queue's insertion number,
    unique) breaks ties in time. A record, not a ``(when, seq, fn, arg)`` tuple: the
    queue compares its keys natively (compiled, ``when`` is an unboxed double), where
    heapq compared tuples through ``PyObject_RichCompare`` (two float comparisons by
    generic calls: ~6 % of a run's instructions at N=64, more with the heap's depth).

    Acyclic (compiled: no GC header, never tracked), though ``fn`` is mostly a bound
    method of the simulation that holds the queue: one is made and freed per event of
    a run, and a tracked one is linked into the collector's list when made and unlinked
    when freed, a write to each of its neighbours there (objects made about when it was,
    cold by then). The collector cannot see through an event, so a queue dropped with
    events in it keeps its owner alive: whoever runs one empties it when done
    (:meth:`EventQueue.clear`; ``Simulation.run`` does)."""

    __slots__ = ("arg", "fn", "seq", "when")

    def __init__(self, when: float, seq: int, fn: Callable[[Any], None], arg: Any) -> None:
        self.when = when
        self.seq = seq
        self.fn = fn
        self.arg = arg

    def __lt__(self, other: Event) -> bool:
        """(when, seq) order, as the queue runs events (heapq works on them too)."""
        return self.when < other.when or (self.when == other.when and self.seq < other.seq)

    def __repr__(self) -> str:
        return f"<Event {self.when!r} #{self.seq} {self.fn!r}({self.arg!r})>"


def slot_push(heap: list[int], slot: int) -> None:
    """Add ``slot`` to a heap of slot numbers (:class:`SlotQueue`'s non-empty slots)."""
    heap.append(slot)
    i = len(heap) - 1
    while i:
        parent = (i - 1) >> 1
        above = heap[parent]
        if above <= slot:
            break
        heap[i] = above
        i = parent
    heap[i] = slot


def slot_pop(heap: list[int]) -> int:
    """Remove and return the smallest of a non-empty heap of slot numbers."""
    top = heap[0]
    last = heap.pop()
    n = len(heap)
    if n:
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and heap[child + 1] < heap[child]:
                child += 1
            if heap[child] >= last:
                break
            heap[i] = heap[child]
            i = child
        heap[i] = last
    return top


def heap_push(heap: list[Event], event: Event) -> None:
    """heapq.heappush on (when, seq), compared natively (the same heap invariant: any
    correct heap pops unique keys in the same order)."""
    heap.append(event)
    _sift_up(heap, len(heap) - 1, event)


def _sift_up(heap: list[Event], pos: int, event: Event) -> None:
    """Put ``event`` at ``pos`` or above it: its parents that sort after it move down."""
    when = event.when
    seq = event.seq
    while pos > 0:
        up = (pos - 1) >> 1
        parent = heap[up]
        pw = parent.when
        if when < pw or (when == pw and seq < parent.seq):
            heap[pos] = parent
            pos = up
        else:
            break
    heap[pos] = event


def heap_pop(heap: list[Event]) -> Event:
    """heapq.heappop on (when, seq): the last entry goes to the root, slides down the path
    of smaller children to a leaf, then back up to its place (CPython's bottom-up sift:
    fewer comparisons, since it usually belongs near the bottom)."""
    last = heap.pop()
    if not heap:
        return last
    top = heap[0]
    end = len(heap)
    pos = 0
    child = 1
    while child < end:
        right = child + 1
        c = heap[child]
        if right < end:
            r = heap[right]
            # heapq: not heap[child] < heap[right] -> the right one
            if not (c.when < r.when or (c.when == r.when and c.seq < r.seq)):
                child = right
                c = r
        heap[pos] = c
        pos = child
        child = 2 * pos + 1
    _sift_up(heap, pos, last)
    return top


def _nothing(_arg: object) -> None:
    """The placeholder event's function (never called)."""


#: what a :class:`Lane` leaves in the slot of an event it handed out
_SPENT: Final = Event(_INF, -1, _nothing, None)


@final
class Lane:
    """A FIFO of :class:`Event` records (the queue's latency lane): a list read from a
    head index, not a ``deque``. Compiled, a deque's ``append``, ``popleft`` and ``[0]``
    are generic calls by name (~100-200 instructions each, once or twice per event of a
    run); these methods are native calls. A slot read holds a shared placeholder, and the
    list drops those slots once they are half of it (an amortised O(1) shift)."""

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[Event] = []
        self._head = 0  #: ``_items[_head]`` is the oldest unread event

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __iter__(self) -> Iterator[Event]:
        """The queued events, oldest first."""
        return iter(self._items[self._head:])

    def append(self, event: Event) -> None:
        self._items.append(event)

    def first(self) -> Event | None:
        """The oldest event (not removed), or None when empty."""
        items = self._items
        head = self._head
        return items[head] if head < len(items) else None

    def popleft(self) -> Event:
        """Remove and return the oldest event (IndexError when empty). Its slot gets a
        shared placeholder: an event read but still in the list would keep its payload
        (blocks, messages) alive until the next shift (N=3,000 to t=4 s: +22 MiB RSS)."""
        items = self._items
        head = self._head
        event = items[head]
        items[head] = _SPENT
        head += 1
        if head >= 64 and 2 * head >= len(items):
            del items[:head]
            head = 0
        self._head = head
        return event


@final
class SlotQueue:
    """Events due at any time, in (time, insertion) order: a calendar of time slots.

    Why not a binary heap: at N=256 a pop cost ~1,400 instructions (9-12 levels, two
    children read each: generic list reads and writes, each an incref or decref of an
    :class:`Event`), ~6 % of a run's instructions with the pushes; this queue costs ~550
    an event (callgrind, N=64). Time is cut into slots of ``1 / rate`` s; the slots of
    the next ``window`` (a power of two) are a ring of lists, each kept sorted as events
    join it (a binary search in a few dozen); the loop takes the current slot's events
    from the front, then moves to the next slot that holds any. An event further ahead
    (a timer) waits in a small heap until the ring reaches its slot.

    Exactly the heap's order: events are pushed in insertion order (each event's ``seq``
    is the largest so far), so an event joins its slot after every event due at or
    before it. A slot's number grows with its time (``int(when * rate)``: the product
    and the truncation are monotonic, so a smaller slot is a strictly earlier time), so
    slots run in number order. An event pushed to the current slot joins its sorted
    rest; one for a later slot joins that slot even while :meth:`first` has looked past
    it (the lane ran first: a peek does not move the calendar, :meth:`take` does); one
    for a slot past the ring's reach goes to the heap, which hands its events to the
    ring, in (time, insertion) order, as the ring moves on: before any later event can
    be pushed to their slot."""

    __slots__ = ("_count", "_cur", "_far", "_head", "_mask", "_rate", "_ring", "_slot",
                 "_slots")

    def __init__(self, rate: float = 1024.0, window: int = 4096) -> None:
        assert window > 0 and window & (window - 1) == 0, "a power of two"
        #: slots per second of virtual time (a power of two: ``when * rate`` is exact)
        self._rate = rate
        #: the slot being run: its events sorted, the next one at ``_head``
        self._cur: list[Event] = []
        self._head = 0
        #: the number of the slot in ``_cur``
        self._slot = 0
        #: slots ``_slot + 1`` .. ``_slot + window - 1`` at ``slot & _mask`` (None: empty)
        self._ring: list[list[Event] | None] = [None] * window
        self._mask = window - 1
        #: events in the ring (not counting ``_cur``)
        self._count = 0
        #: events for slots past the ring's reach, a heap (see :func:`heap_push`)
        self._far: list[Event] = []
        #: the numbers of the ring's slots that hold events, a heap (its first: the next)
        self._slots: list[int] = []

    def __len__(self) -> int:
        return len(self._cur) - self._head + self._count + len(self._far)

    def __iter__(self) -> Iterator[Event]:
        """The queued events (in no particular order: a profile's census)."""
        yield from self._cur[self._head:]
        for events in self._ring:
            if events is not None:
                yield from events
        yield from self._far

    def push(self, event: Event) -> None:
        """Queue ``event`` (its ``seq`` the largest so far: see the class doc)."""
        when = event.when
        slot = int(when * self._rate)
        cur_slot = self._slot
        if slot <= cur_slot:
            events = self._cur
            lo = self._head
        elif slot - cur_slot <= self._mask:
            self._count += 1
            i = slot & self._mask
            found = self._ring[i]
            if found is None:
                self._ring[i] = [event]
                slot_push(self._slots, slot)
                return
            events = found
            lo = 0
        else:
            heap_push(self._far, event)
            return
        # after every event due at or before it (bisect_right on the time)
        hi = len(events)
        if hi > lo and events[hi - 1].when <= when:
            events.append(event)
            return
        while lo < hi:
            mid = (lo + hi) >> 1
            if when < events[mid].when:
                hi = mid
            else:
                lo = mid + 1
        events.insert(lo, event)

    def first(self) -> Event | None:
        """The next event (not removed), or None when the queue is empty.

        It does not move to the next slot that holds events, it only reads that slot's
        first; :meth:`take` moves there. Why: the loop peeks once per event, and while
        the lane's events run before the peeked one they push events for the slots in
        between. Had the peek moved the calendar, each of those would join the peeked
        slot's sorted list (a slot is never left once entered): in the connection storm
        the lane runs ~1 s before the hosts' first ticks, and that one list held
        260,000-520,000 events at N=10,000, a ``list.insert`` moving megabytes per push
        (sim10k-45). Now they join their own slots, and the next peek sees the earliest.
        Which slot is next comes from a heap of the non-empty slots' numbers, not from
        walking the ring: after each of those early slots, a walk would pass every empty
        slot up to the ticks again (~60,000 at N=10,000, 4 slots per host and second)."""
        cur = self._cur
        head = self._head
        if head < len(cur):
            return cur[head]
        if head:
            cur.clear()  # (what ran would stay referenced)
            self._head = 0
        if self._count:
            found = self._ring[self._slots[0] & self._mask]
            assert found is not None
            return found[0]
        far = self._far
        if far:
            return far[0]  # the ring is empty; events past its reach are all later
        return None

    def take(self) -> None:
        """Remove the event :meth:`first` returned (it must have returned one, and
        nothing was pushed since)."""
        head = self._head
        if head < len(self._cur):
            self._head = head + 1
            return
        self._enter()
        self._head = 1

    def _enter(self) -> None:
        """Make the slot :meth:`first` peeked at the current one (its events in ``_cur``)
        and hand the ring the heap's events it now reaches."""
        far = self._far
        rate = self._rate
        # the slot first() looked at, or (the ring empty) the heap's first: jump there
        slot = slot_pop(self._slots) if self._count else int(far[0].when * rate)
        self._slot = slot
        ring = self._ring
        mask = self._mask
        i = slot & mask
        found = ring[i]
        if found is not None:
            ring[i] = None
            self._count -= len(found)
            cur = found
        else:
            cur = []
        # the heap's events that the ring now reaches, in (time, insertion) order
        if far:
            reach = slot + mask
            while far and int(far[0].when * rate) <= reach:
                event = heap_pop(far)
                s = int(event.when * rate)
                if s == slot:
                    cur.append(event)
                else:
                    self._count += 1
                    j = s & mask
                    found = ring[j]
                    if found is None:
                        ring[j] = [event]
                        slot_push(self._slots, s)
                    else:
                        found.append(event)
        self._cur = cur
        self._head = 0

    def pop(self) -> Event | None:
        """The next event, removed (None when the queue is empty)."""
        event = self.first()
        if event is not None:
            self.take()
        return event

    def clear(self) -> None:
        self._cur = []
        self._head = 0
        self._ring = [None] * len(self._ring)
        self._count = 0
        self._slots = []
        self._far.clear()


class EventQueue:
    """A discrete-event loop in virtual time: callbacks ordered by (time, insertion).

    Events due a fixed ``lane_delay`` from now (the one-way latency: every arrival of the
    run) go to a FIFO *lane* instead of the calendar: they are pushed in (time, insertion)
    order already, so the loop merges the lane's head with the calendar's and runs events
    in exactly the order one queue would, at O(1) with half the calendar. The rest go to a
    :class:`SlotQueue` of ``slot_rate`` slots per second (a power of two; its events per
    slot, a few to a few dozen, set its cost: the simulator scales it with the hosts),
    whose ring reaches ``slot_rate * horizon`` seconds ahead (rounded up to a power of two
    slots; events further ahead wait in a heap).
    Both hold :class:`Event` records.
    """

    __slots__ = ("_lane", "_q", "_seq", "lane_delay", "now", "running")

    def __init__(self, lane_delay: float | None = None, slot_rate: float = 1024.0,
                 horizon: float = 4.0) -> None:
        self.now = 0.0
        #: the insertion number of the event being run (set by whatever runs it, with
        #: ``now``): a callback knows its event by it, and so needs no tuple of its own
        #: to tell a stale event from the live one (see :meth:`Network._done`)
        self.running = -2
        window = 1
        while window < slot_rate * horizon:
            window *= 2
        self._q = SlotQueue(slot_rate, window)
        #: the next event's insertion number (ties in time run in insertion order); an
        #: int, not itertools.count: next() is a builtin looked up by name per event
        self._seq = 0
        self._lane = Lane()
        #: the delay whose events take the lane (None: none do)
        self.lane_delay = lane_delay

    def at(self, when: float, fn: Callable[..., None], arg: Any = None) -> None:
        seq = self._seq
        self._seq = seq + 1
        self._q.push(Event(when, seq, fn, arg))

    def after(self, delay: float, fn: Callable[..., None], arg: Any = None) -> None:
        """``fn(arg)`` at ``now + delay`` (in the lane when ``delay`` is its delay)."""
        seq = self._seq
        self._seq = seq + 1
        if delay == self.lane_delay:
            self._lane.append(Event(self.now + delay, seq, fn, arg))
        else:
            self._q.push(Event(self.now + delay, seq, fn, arg))

    def pop(self, until: float) -> Event | None:
        """The next event due at or before ``until`` (removed), or None."""
        q, lane = self._q, self._lane
        first = lane.first()
        h = q.first()
        if h is not None and (first is None or h < first):
            if h.when <= until:
                q.take()
                return h
            return None
        if first is not None and first.when <= until:
            return lane.popleft()
        return None

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Run events up to virtual time ``until`` (or until ``stop()`` turns true,
        checked after each event)."""
        while (event := self.pop(until)) is not None:
            self.now = event.when
            self.running = event.seq
            event.fn(event.arg)
            if stop is not None and stop():
                return
        self.now = max(self.now, until)

    def __len__(self) -> int:
        return len(self._q) + len(self._lane)

    def pending(self) -> Iterator[Event]:
        """The queued events, the calendar's then the lane's (a profile's census)."""
        yield from self._q
        yield from self._lane

    def clear(self) -> None:
        """Drop every event (see :class:`Event`: the collector cannot free them)."""
        self._q.clear()
        self._lane = Lane()


def _drop(flows: list[Pipe], pipe: Pipe) -> None:
    """Remove ``pipe`` from ``flows`` (by identity: ``list.remove`` compares each pipe
    before it through the generic rich comparison)."""
    for i in range(len(flows)):
        if flows[i] is pipe:
            flows.pop(i)
            return


class Link:
    """One direction of a host's access link, shared by the flows crossing it."""

    __slots__ = ("backlog", "cap", "flows", "level", "name", "queued", "sent", "touched")

    def __init__(self, cap: float, name: str = "") -> None:
        self.cap = float(cap)  #: wire bytes/s
        #: the active pipes crossing it, in the order they started (iteration order must
        #: not depend on object addresses: not a set). A list, not a dict: the solver
        #: walks it for every flow that starts or stops (a compiled list walk reads a
        #: slot, a dict walk is a generic call per entry); a stop removes one of ~20.
        self.flows: list[Pipe] = []
        #: the max-min water level: what a flow here gets at most (inf: not saturated)
        self.level = _INF
        self.name = name
        #: wire bytes that crossed this link (flows and small messages)
        self.sent = 0.0
        #: wire bytes queued in the pipes leaving here that have an ``owner`` (a
        #: connection's; not a web seed's) and not sent yet: what the host's uploads have
        #: written ahead (the sum of those pipes' ``queued``, kept as they change)
        self.backlog = 0
        #: :meth:`Network.settle`'s books, by its pass number (see there): in its work
        #: list now, and touched by the pass
        self.queued = 0
        self.touched = 0


class Pipe:
    """One direction of one connection: a FIFO drained by a TCP flow ``up`` -> ``down``."""

    __slots__ = ("active", "at", "cwnd", "deliver", "done_seq", "down", "due", "growing",
                 "idle_since", "items", "last", "latency", "left", "on_drain", "owner",
                 "queued", "rate", "rtt", "seen", "up", "waiting")

    # Declared here, what the rate solver and an item's completion read first: compiled,
    # this is the object's field order (mypyc lays attributes out as declared, the class
    # body before ``__init__``), so ``settle``'s pass over a link's flows touches two
    # cache lines of each pipe, not all four of ``__init__``'s order.
    up: Link
    down: Link
    cwnd: float
    rtt: float
    rate: float
    seen: int
    left: float
    last: float
    due: float
    at: float
    done_seq: int
    active: bool
    growing: bool
    waiting: bool
    items: list[Any]
    queued: int
    owner: Any
    latency: float

    def __init__(self, up: Link, down: Link, latency: float,
                 deliver: Callable[[Any], None]) -> None:
        self.up, self.down = up, down
        self.latency = latency
        self.rtt = max(2 * latency, 1e-4)
        #: called with an item's payload when it arrives at the far end (unless the item
        #: was sent with a function of its own)
        self.deliver = deliver
        #: wire bytes, function, payload of each item, flat (three slots an item: a
        #: tuple each was an allocation, a tracked one, per item sent, held until it
        #: left); a list, not a deque: most pipes are short or empty, and an empty deque
        #: costs 600 bytes (a million pipes at N=10,000)
        self.items: list[Any] = []
        self.queued = 0  #: wire bytes in ``items``
        self.left = 0.0  #: bytes of the head item not yet sent, as of ``last``
        self.last = 0.0
        self.rate = 0.0
        self.cwnd = float(INIT_CWND)
        self.active = False
        #: the insertion number of the completion event in the queue that is live (-1:
        #: none): a new one, or the flow's stop, leaves any other stale; the event's arg
        #: is the pipe itself (a ``(pipe, generation)`` tuple was an allocation per event)
        self.done_seq = -1
        #: when the head item is due to leave, and when the valid completion event for it
        #: fires (``at`` <= ``due``: a rate that fell leaves the event where it was, and the
        #: event comes back at ``due``; only a rate that rose schedules a new one)
        self.due = _INF
        self.at = _INF
        self.growing = False
        self.idle_since = 0.0
        #: the sender has more to write: ``on_drain(pipe)`` after each item leaves
        self.waiting = False
        self.on_drain: Callable[[Pipe], None] | None = None
        #: whatever the driver wants to find from the pipe (one shared ``on_drain`` then
        #: serves every pipe, instead of a closure per pipe)
        self.owner: Any = None
        #: the last :meth:`Network.settle` pass that re-rated this flow (see there)
        self.seen = 0

    @property
    def cap(self) -> float:
        return self.cwnd / self.rtt


class Network:
    """Links, pipes and the rate solver, on an :class:`EventQueue`."""

    def __init__(self, events: EventQueue, *, tolerance: float = 1e-6) -> None:
        self.ev = events
        self.tol = tolerance
        #: solver passes over links (a profile figure)
        self.passes = 0
        #: :meth:`settle`'s calls so far: each marks the links and flows it has seen with
        #: its number (stale marks never match the next)
        self._settles = 0
        self._done_fn = self._done  # one bound method for the per-item events
        self._grow_fn = self._grow

    # -- sending ---------------------------------------------------------------------------
    def send(self, pipe: Pipe, nbytes: int, payload: Any,
             deliver: Callable[[Any], None] | None = None) -> None:
        """Queue ``nbytes`` of payload (wire overhead is added here) for delivery to
        ``deliver`` (default: the pipe's)."""
        size = nbytes + -(-nbytes // MSS) * OVERHEAD  # wire(nbytes), inlined: per block
        ev = self.ev
        now = ev.now
        fn = pipe.deliver if deliver is None else deliver
        if not pipe.active and size <= SMALL:
            # Serialisation time (microseconds) is left out: arrivals stay in FIFO order.
            pipe.up.sent += size
            lat = pipe.latency
            seq = ev._seq
            ev._seq = seq + 1
            if lat == ev.lane_delay:
                ev._lane.append(Event(now + lat, seq, fn, payload))
            else:
                ev._q.push(Event(now + lat, seq, fn, payload))
            return
        items = pipe.items
        pipe.queued += size
        if pipe.owner is not None:
            pipe.up.backlog += size
        if size <= SMALL and len(items) > 3:
            # Behind data, a small message rides with the item it follows (as TCP packs
            # it into that item's last segment): it arrives with it, one event for both,
            # not two more per Have (the head item, being sent, is never extended).
            tfn = items[-2]
            if tfn is _together:
                items[-1].append((fn, payload))
            else:
                items[-1] = [(tfn, items[-1]), (fn, payload)]
                items[-2] = _together
            items[-3] = cast(int, items[-3]) + size
            return
        items.append(size)
        items.append(fn)
        items.append(payload)
        if not pipe.active:
            self._start(pipe, now)

    def send_wire(self, pipe: Pipe, size: int, payload: Any,
                  deliver: Callable[[Any], None]) -> None:
        """Queue one item of ``size`` wire bytes (overhead already counted: a run of
        blocks is one item whose size is the sum of each message's :func:`wire`)."""
        items = pipe.items
        items.append(size)
        items.append(deliver)
        items.append(payload)
        pipe.queued += size
        if pipe.owner is not None:
            pipe.up.backlog += size
        if not pipe.active:
            self._start(pipe, self.ev.now)

    def close(self, pipe: Pipe) -> None:
        """Drop whatever is queued (the connection is gone)."""
        pipe.items.clear()
        if pipe.owner is not None:
            pipe.up.backlog -= pipe.queued
        pipe.queued = 0
        if pipe.active:
            self._stop(pipe, self.ev.now)

    def _start(self, pipe: Pipe, now: float) -> None:
        idle = now - pipe.idle_since
        rto = MIN_RTO + pipe.rtt
        if pipe.idle_since and idle > rto:  # Linux tcp_cwnd_restart
            cwnd = pipe.cwnd
            while idle > rto and cwnd > INIT_CWND:
                cwnd /= 2
                idle -= rto
            pipe.cwnd = max(float(INIT_CWND), min(cwnd, pipe.cwnd))
        pipe.active = True
        pipe.left = float(cast(int, pipe.items[0]))
        pipe.last = now
        pipe.rate = 0.0
        pipe.at = pipe.due = _INF
        up, down = pipe.up, pipe.down
        up.flows.append(pipe)
        if down is not up:
            down.flows.append(pipe)
        self.settle(up, down)

    def _stop(self, pipe: Pipe, now: float) -> None:
        pipe.active = False
        pipe.done_seq = -1
        pipe.rate = 0.0
        pipe.idle_since = now
        up, down = pipe.up, pipe.down
        _drop(up.flows, pipe)
        if down is not up:
            _drop(down.flows, pipe)
        self.settle(up, down)

    def _done(self, pipe: Pipe) -> None:
        ev = self.ev
        if ev.running != pipe.done_seq:
            return  # stale: replaced by a sooner one, or the flow stopped
        now = ev.now
        due = pipe.due
        if due > now:  # the rate fell since: not gone yet, come back when it is due
            pipe.at = due
            seq = ev._seq
            ev._seq = seq + 1
            pipe.done_seq = seq
            ev._q.push(Event(due, seq, self._done_fn, pipe))
            return
        items = pipe.items
        size = cast(int, items[0])
        fn = items[1]
        payload = items[2]
        del items[:3]
        pipe.queued -= size
        up = pipe.up
        up.sent += size
        if pipe.owner is not None:
            up.backlog -= size
        q = ev._q
        seq = ev._seq
        ev._seq = seq + 1
        lat = pipe.latency
        if lat == ev.lane_delay:
            ev._lane.append(Event(now + lat, seq, fn, payload))
        else:
            q.push(Event(now + lat, seq, fn, payload))
        if pipe.waiting and pipe.on_drain is not None:
            pipe.on_drain(pipe)
        if items:
            left = pipe.left = float(cast(int, items[0]))
            pipe.last = now
            due = pipe.due = pipe.at = now + left / pipe.rate
            seq = ev._seq
            ev._seq = seq + 1
            pipe.done_seq = seq
            q.push(Event(due, seq, self._done_fn, pipe))
        else:
            self._stop(pipe, now)

    def _grow(self, pipe: Pipe) -> None:
        pipe.growing = False
        if not pipe.active or pipe.cwnd >= MAX_CWND:
            return
        if pipe.rate * pipe.rtt * 2 >= pipe.cwnd * 0.999:  # cwnd-limited (slow start)
            pipe.cwnd = min(float(MAX_CWND), pipe.cwnd * 2)
            self.settle(pipe.up, pipe.down, grown=pipe)

    # -- the solver ------------------------------------------------------------------------
    @staticmethod
    def _level(link: Link) -> float:
        """Water level of ``link`` given each flow's limit elsewhere (its cap, the far end)."""
        cap = link.cap
        flows = link.flows
        if not flows:
            return _INF
        # The sum of the demands first, without a list: most links are not saturated
        # (~70 % of calls), and only a saturated one needs them sorted.
        total = 0.0
        for f in flows:
            other = f.down if f.up is link else f.up
            c = f.cwnd / f.rtt
            lv = other.level
            total += c if c < lv else lv
        if total <= cap:
            return _INF
        demands = []
        for f in flows:  # the same values again
            other = f.down if f.up is link else f.up
            c = f.cwnd / f.rtt
            lv = other.level
            demands.append(c if c < lv else lv)
        demands.sort()
        n = len(demands)
        for i, d in enumerate(demands):
            share = cap / (n - i)
            if d >= share:
                return share
            cap -= d
        return _INF  # unreachable: the sum exceeded the capacity

    def settle(self, up: Link, down: Link, grown: Pipe | None = None) -> None:
        """Re-solve the rates after flows joined or left links ``up`` and ``down`` (or
        ``grown``'s window changed), then reschedule every flow whose rate moved.

        The work list is a FIFO of the links whose level may move; a link is in it at
        most once at a time (``Link.queued``), and every link it ever held is re-rated
        once, in the order it first joined (``Link.touched``), each of their flows once
        (``Pipe.seen``). Those marks are this call's number, not sets, a deque and a dict
        made per call: a settle runs for every flow that starts or stops (the containers
        and their by-name method calls were half of its ~16,600 instructions at N=64)."""
        mark = self._settles = self._settles + 1
        up.queued = up.touched = mark
        down.queued = mark
        work = [up]
        if down.touched != mark:
            down.touched = mark
            work.append(down)
        touched = [up, down] if len(work) == 2 else [up]
        if down is up:
            work.append(down)  # (as a deque of both would hold it twice)
        head = 0
        tol = self.tol
        budget = 200 + 20 * 2
        while head < len(work) and budget > 0:
            budget -= 1
            link = work[head]
            head += 1
            link.queued = 0
            new = self._level(link)
            old = link.level
            self.passes += 1
            if new == old or (new != _INF and old != _INF and abs(new - old) <= tol * old):
                continue
            link.level = new
            for f in link.flows:
                other = f.down if f.up is link else f.up
                if other.queued != mark:
                    other.queued = mark
                    if other.touched != mark:
                        other.touched = mark
                        touched.append(other)
                    work.append(other)
        ev = self.ev
        now = ev.now
        q = ev._q
        seq = ev._seq
        done = self._done_fn
        grow = self._grow_fn
        for link in touched:
            for f in link.flows:
                if f.seen == mark:
                    continue
                f.seen = mark
                # _rerate(f, now), inlined: this runs ~19 times per settle, for every
                # item that starts or ends a flow (the same arithmetic, in the same order)
                rtt = f.rtt
                cwnd = f.cwnd
                c = cwnd / rtt
                rate = f.up.level
                if c < rate:
                    rate = c
                b = f.down.level
                if b < rate:
                    rate = b
                old_rate = f.rate
                if rate != old_rate:
                    if old_rate:
                        left = f.left - old_rate * (now - f.last)
                        f.left = left if left >= 0.0 else 0.0
                    f.last = now
                    f.rate = rate
                    due = f.due = now + f.left / rate
                    if due < f.at:  # sooner than the event in the queue (if any): a new one
                        f.at = due
                        f.done_seq = seq
                        q.push(Event(due, seq, done, f))
                        seq += 1
                if not f.growing and cwnd < MAX_CWND and rate * rtt * 2 >= cwnd * 0.999:
                    f.growing = True
                    q.push(Event(now + rtt, seq, grow, f))
                    seq += 1
        ev._seq = seq
        if grown is not None and grown.seen != mark and grown.active:
            self._rerate(grown, now)

    def _rerate(self, f: Pipe, now: float) -> None:
        c = f.cwnd / f.rtt
        a, b = f.up.level, f.down.level
        rate = c if c < a else a
        if b < rate:
            rate = b
        if rate != f.rate:
            if f.rate:
                f.left -= f.rate * (now - f.last)
                if f.left < 0.0:
                    f.left = 0.0
            f.last = now
            f.rate = rate
            due = f.due = now + f.left / rate
            if due < f.at:  # sooner than the event in the queue (if any): a new one
                f.at = due
                ev = self.ev
                seq = ev._seq
                ev._seq = seq + 1
                f.done_seq = seq
                ev._q.push(Event(due, seq, self._done_fn, f))
        if not f.growing and f.cwnd < MAX_CWND and rate * f.rtt * 2 >= f.cwnd * 0.999:
            f.growing = True
            self.ev.at(now + f.rtt, self._grow, f)


def maxmin(caps: Sequence[float], flows: Sequence[tuple[float, Sequence[int]]]) -> list[float]:
    """The exact max-min fair rates by progressive filling (a reference for tests).

    ``caps``: capacity per link; ``flows``: (own cap, indices of the links it crosses).
    """
    n = len(flows)
    rate = [0.0] * n
    frozen = [False] * n
    left = list(caps)
    while not all(frozen):
        users = [[i for i in range(n) if not frozen[i] and k in flows[i][1]]
                 for k in range(len(caps))]
        steps = [left[k] / len(u) for k, u in enumerate(users) if u]
        steps += [flows[i][0] - rate[i] for i in range(n) if not frozen[i]]
        step = min(steps)
        for i in range(n):
            if not frozen[i]:
                rate[i] += step
                for k in flows[i][1]:
                    left[k] -= step
        for i in range(n):
            if frozen[i]:
                continue
            if flows[i][0] - rate[i] <= 1e-9 * max(1.0, flows[i][0]) or any(
                    left[k] <= 1e-9 * max(1.0, caps[k]) for k in flows[i][1]):
                frozen[i] = True
    return rate
