from __future__ import annotations

import hashlib
import os

import pytest

from swarmhub.metainfo.merkle import (
    block_hashes,
    check_hash_request,
    file_root,
    hashes_with_proof,
    next_pow2,
    piece_layer,
    reduce_layer,
    root_from_layer,
    tree_layers,
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


@pytest.mark.parametrize(("index", "length", "proof_layers"), [(0, 2, 2), (4, 4, 2), (6, 2, 1),
                                                              (0, 8, 2), (2, 1, 0)])
def test_hashes_with_proof_rebuild_the_root(index: int, length: int, proof_layers: int) -> None:
    base = [hashlib.sha256(bytes([i])).digest() for i in range(7)]
    layers = tree_layers(base, 8, bytes(32))
    root = layers[-1][0]
    payload = hashes_with_proof(layers, index, length, proof_layers)
    assert payload is not None
    hashes = [payload[i:i + 32] for i in range(0, len(payload), 32)]
    got, uncles = hashes[:length], hashes[length:]
    assert got == layers[0][index:index + length]
    # Climb from the subtree root with the uncles, as a BEP 52 requester would.
    node = reduce_layer(got, length)
    pos = index // length
    for uncle in uncles:
        node = hashlib.sha256(uncle + node if pos & 1 else node + uncle).digest()
        pos //= 2
    if length.bit_length() - 1 + len(uncles) == 3:
        assert node == root
    else:
        assert node == layers[length.bit_length() - 1 + len(uncles)][pos]


def test_hashes_with_proof_refuses_illegal_requests() -> None:
    layers = tree_layers([bytes(32)] * 4, 4, bytes(32))
    assert hashes_with_proof(layers, 1, 2, 1) is None  # index not a multiple of length
    assert hashes_with_proof(layers, 0, 3, 1) is None  # length not a power of two
    assert hashes_with_proof(layers, 8, 2, 1) is None  # past the layer
    assert hashes_with_proof(layers, 0, 8, 1) is None  # over-long: more than the layer
    assert hashes_with_proof(layers, 0, 2, 2) is None  # a proof layer above the root
    assert hashes_with_proof(layers, 0, 0, 0) is None


@pytest.mark.parametrize(
    ("width", "index", "length", "proofs", "ok"),
    [(512, 0, 512, 8, True), (512, 256, 256, 8, True), (512, 0, 512, 9, False),
     (512, 0, 1024, 8, False), (512, 512, 2, 0, False), (512, 3, 2, 0, False),
     (512, 0, 6, 0, False), (16384, 0, 16384, 0, False), (16384, 8192, 8192, 13, True)],
)  # fmt: skip
def test_check_hash_request(width: int, index: int, length: int, proofs: int, ok: bool) -> None:
    assert (check_hash_request(width, index, length, proofs) is None) is ok


@pytest.mark.parametrize("leaves", [0, 1, 2, 3, 5])
def test_reduce_layer_hashes_no_pad_above_the_root(leaves: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The root's level needs no pad node: a 32 KiB piece of a hybrid torrent (the netns
    lab's, ~1,000 per peer) is 2 leaves + 1 root, not one more hash of two pads. The
    result is still the BEP 52 root (an empty layer: the pad tree's own root)."""
    layer = [os.urandom(32) for _ in range(leaves)]
    expected = reduce_layer(layer, 8)
    calls = 0
    real = hashlib.sha256

    def counting(data: bytes = b"") -> object:
        nonlocal calls
        calls += 1
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)  # (the module merkle calls through)
    assert reduce_layer(layer, 8) == expected
    padded = layer + [bytes(32)] * (8 - leaves)
    while len(padded) > 1:
        padded = [real(padded[i] + padded[i + 1]).digest() for i in range(0, len(padded), 2)]
    assert expected == padded[0]
    nodes = {0: 0, 1: 1 + 1 + 1, 2: 1 + 1 + 1, 3: 2 + 1 + 1, 5: 3 + 2 + 1}[leaves]
    pads = 2 if leaves else 3  # one per level below the root (all three for no nodes)
    assert calls == nodes + pads
