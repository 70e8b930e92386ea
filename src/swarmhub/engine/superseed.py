"""Which pieces an initial seed shows to which peer: super-seeding (sans-IO).

Why: when one seed feeds many leechers, its upload is the bottleneck (the peer-to-peer
bound is ``F/u_s``), so every byte it sends twice makes the whole swarm finish later.
A seed that advertises everything lets each leecher pick on its own; leechers cannot see
what the others are fetching from the seed, so they pick the same pieces (measured in
the lab at N=8: the seed sent 1.25 F, a quarter of it duplicates).

Like BEP 16, the seed advertises no pieces at first (``HaveNone``) and then *offers*
pieces to each peer with ``Have`` messages, so it alone decides what leaves it:

1. first every piece once, in random order, each to one peer only (the *fresh* pool; the
   open offers of a peer that leaves go back to its head);
2. then, when the fresh pool is empty, the pieces with the fewest copies (peers that have
   it, sends we completed, open offers), so the tail still goes where it is scarce.

Copies are counted among the peers connected now, as libtorrent's
``get_piece_to_super_seed`` does (BEP 16 is silent on peers leaving): a peer that leaves
takes the pieces we sent it along, and one it held the only copy of goes back to the head
of the fresh pool, as its open offers do. (``lab simulate --peers 16,64,256 --modes
p2p,hybrid --latency 10ms --piece-size 256KiB``, seed 1: the same completion times, as
peers leave only at the end there; with ``--join-rate 8 --leave-rate 0.03`` at N=64,
seeds 1-3, the last completion 0.04-0.4 s earlier in 5 of 6 runs.)

Unlike BEP 16 a new offer does not wait for another peer to report the piece: it comes
as soon as we have sent the last block of an offer or the peer reports having it, and
each peer holds ``window`` open offers (the engine sizes it from the peer's rate), so a
single fast leecher is never starved. Peers that request pieces we have not offered are
still served: offers steer, they do not restrict.

Peers are opaque hashable handles; bitfields are one 0/1 byte per piece. No I/O.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Hashable

__all__ = ["SuperSeeder"]

#: Seconds of offer turnarounds :meth:`SuperSeeder.turnaround` averages: long enough to
#: hold a few dozen offers, short enough to follow a change (a busy machine, a new
#: round-trip time).
TURNAROUND_WINDOW = 2.0


class SuperSeeder:
    """Offers of one seeding torrent; see the module docstring for the policy."""

    def __init__(
        self,
        num_pieces: int,
        piece_size: Callable[[int], int],
        availability: Callable[[int], int],
        rng: random.Random | None = None,
    ) -> None:
        self._n = num_pieces
        self._piece_size = piece_size
        self._availability = availability
        self._rng = rng if rng is not None else random.Random()
        fresh = list(range(num_pieces))
        self._rng.shuffle(fresh)
        #: Pieces never offered to anyone, popped from the end.
        self._fresh = fresh
        #: Open offers per piece (peers that were shown it and are still being sent it).
        self._offered = [0] * num_pieces
        #: Completed sends per piece (a peer holds it, or will once it has checked it).
        self._sent = [0] * num_pieces
        #: Per peer: open offers (piece -> bytes sent of it), every piece shown to it, and
        #: the pieces sent to it in full (its share of ``_sent``).
        self._offers: dict[Hashable, dict[int, int]] = {}
        #: open offers of every peer together (the sum of ``_offers``' lengths), kept as
        #: they open and close: the offer pass asks for it after each offer it gives, and
        #: a sum over the peers made that pass O(N) per offer at the source
        self._open_total = 0
        self._shown: dict[Hashable, bytearray] = {}
        self._done: dict[Hashable, list[int]] = {}
        #: When each open offer was made, by (peer, piece).
        self._since: dict[tuple[Hashable, int], float] = {}
        #: (completed at, turnaround) of recent offers, oldest first, and their sum.
        self._turns: collections.deque[tuple[float, float]] = collections.deque()
        self._turns_sum = 0.0

    # -- peers -----------------------------------------------------------------------------
    def add_peer(self, peer: Hashable) -> None:
        """A peer connected while we seed: nothing is shown to it yet."""
        self._offers.setdefault(peer, {})
        self._shown.setdefault(peer, bytearray(self._n))
        self._done.setdefault(peer, [])

    def remove_peer(self, peer: Hashable) -> None:
        """The peer left (call after the availability forgot it): its open offers go back
        to the pool of pieces to give, and the pieces we sent it no longer count as copies.
        A piece no one else holds, was sent in full or is offered goes to the head of the
        fresh pool, oldest first: otherwise the pieces offered to a short-lived
        connection (the source's first, at t=0.05 s in ``lab simulate``) left the seed
        only when the fresh pool ran dry (at 14 s instead of 0.4 s, as the last first
        copies)."""
        back: list[int] = []
        for index in self._done.pop(peer, ()):
            self._sent[index] -= 1
            if not self._offered[index] and not self._sent[index] and \
                    not self._availability(index):
                back.append(index)
        offers = self._offers.pop(peer, {})
        self._open_total -= len(offers)
        for index in offers:
            self._offered[index] -= 1
            self._since.pop((peer, index), None)
            if not self._offered[index] and not self._sent[index]:
                back.append(index)
        self._shown.pop(peer, None)
        # popped from the end: the oldest offer is the next piece given (the pool checks
        # the piece's availability again when it pops it).
        self._fresh.extend(reversed(back))

    def __contains__(self, peer: object) -> bool:
        return peer in self._offers

    def shown(self, peer: Hashable, index: int) -> bool:
        shown = self._shown.get(peer)
        return shown is not None and bool(shown[index])

    def open_offers(self, peer: Hashable) -> list[int]:
        return list(self._offers.get(peer, ()))

    def open_count(self, peer: Hashable | None = None) -> int:
        """Open offers of ``peer``, or of every peer (the seed's upload in flight)."""
        if peer is not None:
            offers = self._offers.get(peer)
            return len(offers) if offers is not None else 0
        return self._open_total

    @property
    def fresh_left(self) -> int:
        """Pieces not yet offered to anyone (an upper bound: stale entries are dropped lazily)."""
        return len(self._fresh)

    # -- events ----------------------------------------------------------------------------
    def peer_has(self, peer: Hashable, index: int) -> bool:
        """The peer reported piece ``index`` (Have, Bitfield): True if that closed an offer
        (the caller should then :meth:`top_up`)."""
        offers = self._offers.get(peer)
        if offers is None or index not in offers:
            return False
        del offers[index]
        self._open_total -= 1
        self._offered[index] -= 1
        self._since.pop((peer, index), None)
        return True

    def declined(self, peer: Hashable) -> bool:
        """The peer stays not interested in its open offers (it downloads only some
        files): close them so :meth:`top_up` shows it others. True if any were open.
        They stay shown: it can still ask for them, they are just not offered again."""
        offers = self._offers.get(peer)
        if not offers:
            return False
        for index in offers:
            self._offered[index] -= 1
            self._since.pop((peer, index), None)
        self._open_total -= len(offers)
        offers.clear()
        return True

    def uploaded(self, peer: Hashable, index: int, nbytes: int, now: float = 0.0) -> bool:
        """We sent ``nbytes`` of piece ``index`` to ``peer``: True when that completed an
        offer (the caller should then :meth:`top_up`). The first bytes of an offer time
        its answer (see :meth:`turnaround`)."""
        offers = self._offers.get(peer)
        if offers is None or index not in offers:
            return False
        since = self._since.pop((peer, index), None)
        if since is not None:  # its first bytes: the peer answered the offer
            took = now - since
            self._turns.append((now, took))
            self._turns_sum += took
        done = offers[index] + nbytes
        if done < self._piece_size(index):
            offers[index] = done
            return False
        del offers[index]
        self._open_total -= 1
        self._offered[index] -= 1
        self._sent[index] += 1
        self._done[peer].append(index)
        return True

    def turnaround(self, now: float) -> float:
        """Recent offers' mean time from the Have to their first block leaving us (over
        ``TURNAROUND_WINDOW`` s, at least the latest offer; 0 before any): how long an
        offer holds a share of the budget before it uses our uplink. To the first block,
        not the last: the rest is our own sending, which grows with the budget (timed to
        the last block, a budget sized on it grew until its cap). The mean, not the
        minimum: on a busy machine the quickest answers came in 0.05 s and the mean in
        0.17 s (netns lab hybrid N=32); a budget sized on the quickest kept the hub's
        uplink a third busy."""
        turns = self._turns
        while len(turns) > 1 and turns[0][0] < now - TURNAROUND_WINDOW:
            self._turns_sum -= turns.popleft()[1]
        return self._turns_sum / len(turns) if turns else 0.0

    def top_up(self, peer: Hashable, have: bytes | bytearray, window: int,
               now: float = 0.0) -> list[int]:
        """Pieces to show ``peer`` now (send a Have for each) so it holds ``window`` open
        offers; ``have`` is its bitfield. Empty when it has been shown all it lacks."""
        offers = self._offers.get(peer)
        shown = self._shown.get(peer)
        if offers is None or shown is None:
            return []
        for index in [i for i in offers if have[i]]:  # it got them elsewhere meanwhile
            self.peer_has(peer, index)
        out: list[int] = []
        while len(offers) < window:
            picked = self._pick(have, shown)
            if picked is None:
                break
            offers[picked] = 0  # a new key: _pick skips what the peer was shown
            self._open_total += 1
            self._since[(peer, picked)] = now
            self._offered[picked] += 1
            shown[picked] = 1
            out.append(picked)
        return out

    # -- choosing ------------------------------------------------------------------------------
    def _pick(self, have: bytes | bytearray, shown: bytearray) -> int | None:
        fresh = self._fresh
        avail = self._availability
        while fresh:
            index = fresh.pop()
            # Still fresh only if no one holds it (another seed may have sent it).
            if not have[index] and not shown[index] and avail(index) == 0:
                return index
        best: int | None = None
        best_key = 0
        ties = 0
        offered, sent = self._offered, self._sent
        for index in range(self._n):
            if have[index] or shown[index]:
                continue
            key = offered[index] + max(sent[index], avail(index))
            if best is None or key < best_key:
                best, best_key, ties = index, key, 1
            elif key == best_key:
                ties += 1
                if self._rng.randrange(ties) == 0:  # uniform among the ties
                    best = index
        return best
