"""A lab peer's per-piece path in-process: store a 32 KiB piece's two blocks, verify it on
the loop (hash, page-cache write), hand it to the upload cache; CPU per piece.

    PYTHONPATH=TREE/src .venv/bin/python bench/piece_path.py [--pieces 1024] [--rounds 5]
        [--dir DIR]

Why: a netns lab peer (N=32, 32 MiB, 32 KiB pieces) finishes ~1,000 pieces, and what it
does per piece (``Pieces.store``, ``Pieces.start_verify``: SHA-256 leaves, a pwrite into
the page cache, ``Uploader.keep_written``) was a third of the interpreted CPU an
in-process sampler saw (labcpu-42). The lab's noise hides a few per cent; this does not.
A hybrid torrent as the lab's, a file in ``--dir`` (a disk folder: the lab's hosts write
to the root file system), 31 stub peers interested and lacking every piece (so every
piece is kept for upload, as in the lab). Each round writes a fresh file (fresh page-cache
pages, as a download's). Prints the main thread's CPU us per piece, medians of
``--rounds``; ``PYTHONPATH`` picks the tree (A/B: run it for both, alternating).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from swarmhub.engine.picker import Block
from swarmhub.engine.pieces import Pieces
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.uploads import Uploader
from swarmhub.metainfo.create import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage import TorrentStorage

BLOCK = 16 * 1024


def one_round(folder: Path, data: bytes, pl: int, meta: object, settings: Settings) -> float:
    """CPU us per piece of store + start_verify (+ keep_written) over every piece."""
    storage = TorrentStorage(meta, folder / "dst", direct_writes=True)  # type: ignore[arg-type]
    storage.open()
    n = len(data) // pl
    peers = {i: SimpleNamespace(have=bytearray(n), closed=False, peer_interested=True)
             for i in range(31)}
    torrent = SimpleNamespace(settings=settings, swarm=SimpleNamespace(peers=peers), meta=meta)
    up = Uploader(torrent, RateLimiter(0))
    session = SimpleNamespace(settings=settings, hash_pool=None, disk_pool=None, hash_threads=2)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    pieces.on_written = up.keep_written
    view = memoryview(data)
    order = list(range(n))
    order = order[::2] + order[1::2]  # not in file order, as a swarm's pieces come
    results: list[object] = []

    def done(index: int, verdict: object, later: bool) -> None:
        results.append(verdict)

    def spawn(aw: object) -> None:
        raise AssertionError("a small piece took a task")

    t0 = time.thread_time()
    for index in order:
        blocks = [Block(index, b, BLOCK) for b in range(0, pl, BLOCK)]
        starts = [index * pl + b for b in range(0, pl, BLOCK)]
        pieces.store(view, blocks, starts, [True] * len(blocks))
        pieces.start_verify(index, False, False, done, spawn)
    cpu = time.thread_time() - t0
    storage.close()
    assert len(results) == n and all(v[0] for v in results)  # type: ignore[index]
    return cpu / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", help="a folder on disk (default: a temporary one)")
    args = ap.parse_args()
    pl = args.piece_kib * 1024
    base = Path(tempfile.mkdtemp(prefix="piecepath-", dir=args.dir))
    data = os.urandom(args.pieces * pl)
    src = base / "src" / "payload"
    src.parent.mkdir()
    src.write_bytes(data)
    meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=pl)
    settings = Settings()
    out = []
    try:
        for r in range(args.rounds):
            folder = base / f"r{r}"
            folder.mkdir()
            out.append(one_round(folder, data, pl, meta, settings))
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    import swarmhub
    print(f"{Path(swarmhub.__file__).parents[2]}: {args.pieces} pieces of {args.piece_kib} KiB, "
          f"us/piece {' '.join(f'{x:.1f}' for x in out)} median {statistics.median(out):.1f} "
          f"(load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
