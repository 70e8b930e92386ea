"""A torrent's status figures (:func:`swarmhub.engine.status.snapshot`): the wanted bytes
and how many of them we have, with every piece wanted (no per-piece walk) and with some
skipped, against a count piece by piece."""

from __future__ import annotations

import random

from swarmhub.engine.status import snapshot
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.engine.torrent import TorrentState
from swarmhub.settings import Settings

PIECE = 2 * BLOCK_SIZE
TOTAL = 9 * PIECE + 1234  # a short last piece


def _swarm(have: str) -> Swarm:
    bits = bytes(c == "*" for c in have)
    return Swarm(len(have), PIECE, TOTAL, Settings(super_seeding=False),
                 rng=random.Random(1), now=0.0, have=bits)


def _by_piece(s: Swarm) -> tuple[int, int]:
    wanted = [i for i in range(s.num_pieces) if s.picker.priority(i)]
    return (sum(s.piece_size(i) for i in wanted),
            sum(s.piece_size(i) for i in wanted if s.have[i]))


def test_every_piece_wanted_counts_the_short_last_piece() -> None:
    s = _swarm("**  *    *")
    st = snapshot(s, TorrentState.DOWNLOADING, None, TOTAL, 0.0)
    assert (st.wanted_bytes, st.wanted_have) == _by_piece(s) == (TOTAL, 3 * PIECE + 1234)
    assert st.bytes_have == 3 * PIECE + 1234
    assert st.progress == st.wanted_have / TOTAL


def test_skipped_pieces_are_left_out_of_the_wanted_bytes() -> None:
    s = _swarm("**  *    *")
    s.picker.set_piece_priority(1, 0)  # had, not wanted
    s.picker.set_piece_priority(2, 0)  # neither
    st = snapshot(s, TorrentState.DOWNLOADING, None, TOTAL, 0.0)
    assert (st.wanted_bytes, st.wanted_have) == _by_piece(s) == (TOTAL - 2 * PIECE,
                                                                 2 * PIECE + 1234)
    assert st.bytes_have == 3 * PIECE + 1234  # what we hold, wanted or not


def test_a_complete_torrent_has_every_wanted_byte() -> None:
    s = _swarm("*" * 10)
    st = snapshot(s, TorrentState.SEEDING, None, TOTAL, 0.0)
    assert (st.wanted_bytes, st.wanted_have, st.progress) == (TOTAL, TOTAL, 1.0)
