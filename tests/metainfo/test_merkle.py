from __future__ import annotations

import hashlib
import os

import pytest

from swarmhub.metainfo.merkle import (
    block_hashes,
    file_root,
    next_pow2,
    piece_layer,
    root_from_layer,
)
from swarmhub.metainfo.model import BLOCK_SIZE


def naive_root(data: bytes) -> bytes:
    """The BEP 52 definition written out the slow way."""
    leaves = block_hashes(data)
    layer = leaves + [bytes(32)] * (next_pow2(len(leaves)) - len(leaves))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0]


@pytest.mark.parametrize("size", [1, BLOCK_SIZE, BLOCK_SIZE * 5 + 100, BLOCK_SIZE * 8])
def test_file_root_matches_definition(size: int) -> None:
    data = os.urandom(size)
    assert file_root(data) == naive_root(data)


@pytest.mark.parametrize("size", [BLOCK_SIZE * 5 + 100, BLOCK_SIZE * 9, BLOCK_SIZE * 33])
def test_root_from_piece_layer_matches_definition(size: int) -> None:
    data = os.urandom(size)
    piece_length = 2 * BLOCK_SIZE
    layer = piece_layer(block_hashes(data), piece_length)
    assert len(layer) == -(-size // piece_length)
    assert root_from_layer(layer, piece_length, size) == naive_root(data)
