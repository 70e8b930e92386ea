"""BEP 52 merkle trees: SHA-256 over 16 KiB blocks, zero-padded to a power of two.

Leaves beyond the end of a file are 32 zero bytes; interior nodes are
``sha256(left + right)``. A file no larger than one piece is verified by its
``pieces root`` alone (leaves padded to the next power of two); a larger file has one
*piece layer* hash per piece (the root of ``piece_length / 16 KiB`` leaves), and its root
pads that layer with the roots of all-zero subtrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from swarmhub.metainfo.model import BLOCK_SIZE

__all__ = [
    "MAX_HASH_REQUEST",
    "ZERO_LEAF",
    "block_hashes",
    "check_hash_request",
    "file_root",
    "hashes_with_proof",
    "next_pow2",
    "piece_layer",
    "piece_root",
    "reduce_layer",
    "root_from_layer",
    "tree_layers",
    "zero_root",
]

ZERO_LEAF = bytes(32)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@lru_cache(maxsize=64)
def zero_root(num_leaves: int) -> bytes:
    """Root of a subtree of ``num_leaves`` (a power of two) zero leaves."""
    if num_leaves <= 1:
        return ZERO_LEAF
    child = zero_root(num_leaves // 2)
    return hashlib.sha256(child + child).digest()


def block_hashes(data: bytes | memoryview, sha1: Any = None) -> list[bytes]:
    """SHA-256 of each 16 KiB block of ``data`` (the last block may be short).

    ``sha1``: a hashlib SHA-1 object to feed the same bytes, block by block right after
    each block's SHA-256, while the block is in the core's first-level cache. Why: a
    hybrid piece checked both ways (the SHA-1 sample, a piece for a v1 peer, a recheck,
    torrent creation) read its bytes from memory twice, once per hash; hashing is
    memory-bound here (a piece is out of cache by the time it is checked)."""
    view = memoryview(data)
    sha256 = hashlib.sha256
    if sha1 is None:
        return [sha256(view[i : i + BLOCK_SIZE]).digest() for i in range(0, len(view), BLOCK_SIZE)]
    update = sha1.update
    out = []
    for i in range(0, len(view), BLOCK_SIZE):
        block = view[i : i + BLOCK_SIZE]
        out.append(sha256(block).digest())
        update(block)
    return out


def reduce_layer(layer: Sequence[bytes], width: int, pad: bytes = ZERO_LEAF) -> bytes:
    """Root over ``layer`` padded with ``pad`` nodes to ``width`` (a power of two) entries.

    Padding subtrees are collapsed: a pair of two pad nodes hashes to the next level's pad,
    so the cost stays proportional to ``len(layer)``, not to ``width``.
    """
    if width & (width - 1) or width < max(1, len(layer)):
        raise ValueError(f"width {width} must be a power of two >= {len(layer)}")
    nodes = list(layer)
    while width > 1:
        if len(nodes) % 2:
            nodes.append(pad)
        nodes = [
            hashlib.sha256(nodes[i] + nodes[i + 1]).digest() for i in range(0, len(nodes), 2)
        ]
        width //= 2
        if width > 1 or not nodes:  # (the root's level needs no pad: one hash per piece)
            pad = hashlib.sha256(pad + pad).digest()
    return nodes[0] if nodes else pad


def piece_root(data: bytes | memoryview, piece_length: int, sha1: Any = None) -> bytes:
    """Piece-layer hash of one piece of a file larger than a piece (short data is padded);
    ``sha1``: see :func:`block_hashes`."""
    return reduce_layer(block_hashes(data, sha1), piece_length // BLOCK_SIZE)


def file_root(data: bytes | memoryview, sha1: Any = None) -> bytes:
    """``pieces root`` of a whole file given its bytes (for files of at most one piece);
    ``sha1``: see :func:`block_hashes`."""
    leaves = block_hashes(data, sha1)
    return reduce_layer(leaves, next_pow2(len(leaves)))


def root_from_layer(layer_hashes: Sequence[bytes], piece_length: int, file_length: int) -> bytes:
    """``pieces root`` of a file from its piece layer (files larger than one piece)."""
    num_blocks = -(-file_length // BLOCK_SIZE)
    leaves_per_piece = piece_length // BLOCK_SIZE
    total_leaves = next_pow2(num_blocks)
    width = max(1, total_leaves // leaves_per_piece)
    return reduce_layer(layer_hashes, next_pow2(max(width, len(layer_hashes))),
                        zero_root(leaves_per_piece))


def piece_layer(data_blocks: Sequence[bytes], piece_length: int) -> list[bytes]:
    """Piece-layer hashes from a file's block hashes (one entry per piece)."""
    per = piece_length // BLOCK_SIZE
    return [
        reduce_layer(data_blocks[i : i + per], per) for i in range(0, len(data_blocks), per)
    ]


def tree_layers(base: Sequence[bytes], width: int, pad: bytes) -> list[list[bytes]]:
    """Every layer from ``base`` (padded with ``pad`` to ``width``) up to the root."""
    layer = list(base) + [pad] * (width - len(base))
    layers = [layer]
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest()
                 for i in range(0, len(layer), 2)]
        layers.append(layer)
    return layers


#: Most hashes one BEP 52 hash request may ask for (libtorrent's limit; BEP 52 says
#: requests SHOULD NOT exceed 512). Bounds the size of one ``hashes`` reply to 256 KiB.
MAX_HASH_REQUEST = 8192


def check_hash_request(width: int, index: int, length: int, proof_layers: int) -> str | None:
    """Why a BEP 52 request for ``length`` hashes at ``index`` of a layer ``width`` wide
    (a power of two, padding included) with ``proof_layers`` must be rejected, or None.

    The rules of BEP 52 (length a power of two, index a multiple of it), kept within the
    layer, and proof layers that exist: a layer ``width`` wide has ``log2(width)``
    layers above it with a sibling to send (libtorrent's ``validate_hash_request`` too).
    Answering an invalid request instead would send a ``hashes`` message whose hash count
    disagrees with its header.
    """
    if not 1 <= length <= MAX_HASH_REQUEST or length & (length - 1):
        return f"length {length} is not a power of two in 1..{MAX_HASH_REQUEST}"
    if index % length:
        return f"index {index} is not a multiple of length {length}"
    if index + length > width:
        return f"hashes {index}..{index + length} run past the layer's {width} entries"
    if not 0 <= proof_layers < width.bit_length() - 1:
        return f"{proof_layers} proof layers, but the layer has {width.bit_length() - 1} above it"
    return None


def hashes_with_proof(layers: Sequence[Sequence[bytes]], index: int, length: int,
                      proof_layers: int) -> bytes | None:
    """A BEP 52 ``hashes`` payload: ``length`` hashes of ``layers[0]`` from ``index``, then
    the uncle hashes up towards the root.

    The requested hashes form a subtree of height log2(length); the proof layers inside it
    are omitted (but counted), so uncles start at the subtree root's sibling. Returns None
    for a request that :func:`check_hash_request` refuses, so the reply always carries
    exactly ``length + max(0, proof_layers + 1 - log2(length))`` hashes.
    """
    base = layers[0]
    if check_hash_request(len(base), index, length, proof_layers) is not None:
        return None
    height = length.bit_length() - 1
    out = list(base[index:index + length])
    node = index >> height
    # Proof layer k holds the uncle at level k; levels 1..height-1 lie inside the subtree.
    for level in range(height, proof_layers + 1):
        out.append(layers[level][node ^ 1])
        node >>= 1
    return b"".join(out)
