"""A shared BlockTable (lab simulate): the same blocks, as one object per block."""

from __future__ import annotations

import random

from swarmhub.engine.picker import Block, BlockTable, PiecePicker

BS = 16384


def _picker(table: BlockTable | None, seed: int) -> PiecePicker:
    # 5 pieces of 3 blocks, the last one short (2.5 blocks)
    picker = PiecePicker(5, 3 * BS, 14 * BS + BS // 2, rng=random.Random(seed), blocks=table)
    for i in range(5):
        picker.peer_has("a", i)
        picker.peer_has("b", i)
    return picker


def test_pickers_sharing_a_table_pick_its_blocks_and_the_same_ones_as_without() -> None:
    table = BlockTable(5, 3 * BS, 14 * BS + BS // 2)
    shared = [_picker(table, 1), _picker(table, 1)]
    plain = _picker(None, 1)
    picks = [p.pick("a", 20) for p in shared]
    want = plain.pick("a", 20)
    assert picks[0] == picks[1] == want  # same values, in the same order
    assert len(want) == 15 and Block(4, 2 * BS, BS // 2) in want
    # one object per block: the two hosts' requests are the table's own objects
    assert all(x is y for x, y in zip(picks[0], picks[1], strict=True))
    assert all(b is table.get(b.index, b.begin, b.length) for b in picks[0])


def test_end_game_duplicates_come_from_the_table_too() -> None:
    table = BlockTable(5, 3 * BS, 14 * BS + BS // 2)
    picker = _picker(table, 2)
    first = picker.pick("a", 20)
    dup = picker.pick("b", 20)  # nothing free: b gets a's blocks (end-game)
    assert dup and set(dup) <= set(first)
    by_value = {b: b for b in first}
    assert all(b is by_value[b] for b in dup)
    picker.check_invariant()


def test_a_table_makes_a_new_block_for_a_slice_that_is_not_one_of_its_blocks() -> None:
    table = BlockTable(5, 3 * BS, 14 * BS + BS // 2)
    assert table.get(4, 2 * BS, BS // 2) is table.row(4)[2]
    odd = [table.get(1, 100, BS), table.get(1, BS, BS - 1), table.get(4, 2 * BS, BS),
           table.get(1, 3 * BS, BS), table.get(7, 0, BS)]
    assert odd == [Block(1, 100, BS), Block(1, BS, BS - 1), Block(4, 2 * BS, BS),
                   Block(1, 3 * BS, BS), Block(7, 0, BS)]
    assert not any(b is t for b in odd[:4] for t in table.row(b.index))


def test_find_hands_back_the_rows_block_and_never_makes_a_row() -> None:
    table = BlockTable(5, 3 * BS, 14 * BS + BS // 2)
    row = table.row(4)
    assert table.find((4, 2 * BS, BS // 2)) is row[2]  # the short last block
    # a piece without a row, an odd slice, a wrong length, out of range: a new block each
    odd = [(1, 0, BS), (4, 100, BS), (4, 2 * BS, BS), (4, 3 * BS, BS), (7, 0, BS), (-1, 0, BS)]
    got = [table.find(key) for key in odd]
    assert got == [Block(*key) for key in odd]
    assert all(type(b) is Block for b in got)
    assert not any(b is r for b in got for r in row)
    assert table.find((1, 0, BS)) is not table.row(1)[0]  # (find made no row for piece 1)
    table.drop(4)
    assert table.find((4, 0, BS)) is not row[0] and table.find((4, 0, BS)) == row[0]


def test_a_pickers_own_table_hands_out_its_requests_and_forgets_a_piece_that_passed() -> None:
    picker = _picker(None, 3)  # a real client's: no shared table, one of its own
    table = picker.blocks
    assert table is not None
    first = picker.pick("a", 3)
    assert len({b.index for b in first}) == 1
    index = first[0].index
    # the receive path finds the very objects the requests were recorded by
    assert all(table.find((b.index, b.begin, b.length)) is b for b in first)
    for b in first:
        picker.block_received("a", b)
    picker.piece_passed(index)
    assert table.find(tuple(first[0])) is not first[0]  # its row went with it
    picker.check_invariant()


def test_a_shared_table_keeps_its_rows_when_a_piece_passes() -> None:
    table = BlockTable(5, 3 * BS, 14 * BS + BS // 2)
    picker = _picker(table, 4)
    first = picker.pick("a", 3)
    for b in first:
        picker.block_received("a", b)
    picker.piece_passed(first[0].index)
    assert table.find(tuple(first[0])) is first[0]  # other hosts still request by it
