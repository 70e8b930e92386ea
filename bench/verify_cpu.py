"""CPU cost of handing finished pieces to the hash and disk pools: per piece, batched or not,
against checking and writing them on the loop.

    .venv/bin/python bench/verify_cpu.py [--pieces 1024] [--piece-kib 32] [--rounds 3] [--no-direct]
        [--version v1|hybrid] [--modes control,path] [--paces steady] [--dir DISK_FOLDER]

Why: at N=32 in the netns lab a peer verifies 1,024 pieces of 32 KiB, and the thread
hand-offs around each (hash pool, disk pool, loop wake-up) cost more than the hashing. This
feeds :class:`~swarmhub.engine.pieces.Pieces` real pieces (real thread pools, real files in a
temporary folder, one task per verify as the torrent spawns) at a paced rate, and measures
the process's CPU time (all threads) and context switches per piece, for ``per-piece``
(every piece on its own, the path large pieces take) against ``batched`` (small pieces
share a hash job that writes them too, and one loop wake-up), ``inline`` (hashed and written
through the page cache on the loop: the path of pieces under ``INLINE_BELOW``, in a task each as
before peercpu-23), ``now`` (the same through ``Pieces.start_verify``, as the torrent does now:
no task), ``path`` (a lab peer's whole per-piece path: ``Pieces.store`` of the piece's blocks,
``start_verify``, and ``Uploader.keep_written`` with 31 stub peers that lack every piece, so
every piece is kept for upload as in the lab; was ``bench/piece_path.py``, labcpu-42) and a
``control`` (the same loop turns with no pieces: the loop's own cost). Pieces go in out of
file order (evens, then odds), as a swarm's come. Writes
use O_DIRECT where the folder allows it, as the peers' do (``--no-direct``: the page cache).
uvloop when installed, as the peers run.
``--version hybrid`` hashes as a hybrid torrent's peer does (SHA-256 leaves and root, plus
SHA-1). Paces: ``steady`` (one piece every 2 ms: the pool is idle when each arrives) and
``bursts`` (8 pieces per loop turn every 16 ms: one busy read of many sockets). Prints
medians of ``--rounds`` runs and, where both ran, the ratios to per-piece. CPU time is
steadier than wall time on a shared machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub.engine.picker import Block
from swarmhub.engine.pieces import Pieces
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.uploads import Uploader
from swarmhub.metainfo.create import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage import TorrentStorage

try:  # as the peers run (swarmhub.aio)
    import uvloop
except ImportError:
    uvloop = None  # type: ignore[assignment]

PACES = {"steady": (1, 0.002), "bursts": (8, 0.016)}
#: mode -> (Pieces.batch_below, Pieces.inline_below); None: the control (no pieces)
MODES: dict[str, tuple[int, int] | None] = {
    "control": None, "per-piece": (0, 0), "batched": (1 << 30, 0), "inline": (0, 1 << 30),
    "now": (0, 1 << 30), "path": (0, 1 << 30)}
BLOCK = 16 * 1024


async def _feed(pieces: Pieces | None, data: bytes, pl: int, n: int, burst: int, gap: float,
                mode: str) -> None:
    tasks: list[asyncio.Future[tuple[bool, object]]] = []
    settled: list[bool] = []

    def done(index: int, verdict: object, later: bool) -> None:
        settled.append(isinstance(verdict, tuple) and verdict[0])

    def spawn(coro: Awaitable[None]) -> None:
        raise AssertionError("a small piece was given a task")
    now = mode in ("now", "path")
    view = memoryview(data)
    for k, i in enumerate(list(range(0, n, 2)) + list(range(1, n, 2))):
        if pieces is None:  # the control: the same loop turns, no pieces
            if (k + 1) % burst == 0:
                await asyncio.sleep(gap)
            continue
        if mode == "path":  # as the peer stores received blocks
            blocks = [Block(i, b, BLOCK) for b in range(0, pl, BLOCK)]
            pieces.store(view, blocks, [i * pl + b for b in range(0, pl, BLOCK)],
                         [True] * len(blocks))
        else:
            pieces.buffers[i] = pieces.new_buffer(i)
            pieces.buffers[i][:] = data[i * pl:(i + 1) * pl]
        if now:
            pieces.start_verify(i, False, False, done, spawn)
        else:
            tasks.append(asyncio.ensure_future(pieces.verify(i, want_digests=False)))
        if (k + 1) % burst == 0:
            await asyncio.sleep(gap)
    verdicts = await asyncio.gather(*tasks)
    assert all(ok for ok, _ in verdicts)
    assert len(settled) == (n if now else 0) and all(settled)


def one(meta_dir: Path, torrent_data: bytes, meta: object, pl: int, n: int,
        mode: str, pace: str, direct: bool) -> tuple[float, float, int]:
    """(CPU us/piece, context switches/piece, batches) of one run."""
    with tempfile.TemporaryDirectory(dir=meta_dir) as d:
        storage = TorrentStorage(meta, Path(d), direct_writes=direct)  # type: ignore[arg-type]
        storage.open()
        session = SimpleNamespace(settings=Settings(), hash_threads=2,
                                  hash_pool=ThreadPoolExecutor(2), disk_pool=ThreadPoolExecutor(2))
        pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
        if mode == "path":  # the upload cache keeps every piece: 31 peers lack them all
            peers = {p: SimpleNamespace(have=bytearray(n), closed=False, peer_interested=True)
                     for p in range(31)}
            torrent = SimpleNamespace(settings=session.settings, meta=meta,
                                      swarm=SimpleNamespace(peers=peers))
            pieces.on_written = Uploader(torrent, RateLimiter(0)).keep_written
        below = MODES[mode]
        if below is not None:
            pieces.batch_below, pieces.inline_below = below
        burst, gap = PACES[pace]
        r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        run = uvloop.run if uvloop is not None else asyncio.run
        run(_feed(None if below is None else pieces, torrent_data, pl, n, burst, gap, mode))
        c1, r1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        session.hash_pool.shutdown()
        session.disk_pool.shutdown()
        storage.close()
    switches = (r1.ru_nvcsw - r0.ru_nvcsw) + (r1.ru_nivcsw - r0.ru_nivcsw)
    return (c1 - c0) / n * 1e6, switches / n, pieces.batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pieces", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    ap.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True,
                    help="O_DIRECT writes where the folder allows them (the peers' default)")
    ap.add_argument("--version", choices=("v1", "hybrid"), default="v1",
                    help="the torrent's hashes (hybrid: as the lab's torrents)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, of {','.join(MODES)}")
    ap.add_argument("--paces", default=",".join(PACES), help=f"of {','.join(PACES)}")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    paces = [p for p in a.paces.split(",") if p]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for p in paces:
        if p not in PACES:
            ap.error(f"unknown pace {p!r}; choose from {', '.join(PACES)}")
    pl = a.piece_kib * 1024
    print(f"bench/verify_cpu.py ({Path(__file__).resolve().parents[1]}): {a.pieces} pieces of "
          f"{a.piece_kib} KiB, {a.version}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs, {'O_DIRECT' if a.direct else 'page-cache'} writes")
    with tempfile.TemporaryDirectory(dir=a.dir) as root:
        src = Path(root) / "src" / "payload"
        src.parent.mkdir()
        data = os.urandom(a.pieces * pl)
        src.write_bytes(data)
        version = TorrentVersion.HYBRID if a.version == "hybrid" else TorrentVersion.V1
        meta = create_torrent(src, version=version, piece_length=pl)
        for pace in paces:
            res: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
            for _ in range(a.rounds):
                for mode in modes:  # alternate within each round
                    res[mode].append(one(Path(root), data, meta, pl, a.pieces, mode, pace,
                                         a.direct))
            med = {b: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
                       statistics.median(r[2] for r in rs)) for b, rs in res.items()}
            for mode in modes:
                cpu, sw, nb = med[mode]
                print(f"  {pace:6} {mode:9} CPU {cpu:7.1f} us/piece "
                      f"(runs {', '.join(f'{r[0]:.0f}' for r in res[mode])}), "
                      f"{sw:5.2f} context switches/piece, {nb} batches")
            if "control" not in med or "per-piece" not in med:
                continue
            c = med["control"][0]
            base = med["per-piece"][0]
            for mode in ("batched", "inline", "now", "path"):
                if mode not in med:
                    continue
                print(f"  {pace:6} {mode} / per-piece CPU: {med[mode][0] / base:.2f}, "
                      f"above the control: {(med[mode][0] - c) / (base - c):.2f}")
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
