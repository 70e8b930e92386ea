"""Torrent creation speed: swarmhub's create_torrent vs libtorrent's set_piece_hashes.

    .venv/bin/python bench/create.py [--size 512] [--rounds 3] [--piece-kib N] [--threads N]

Why this shape: one random file (page-cached after it is written, so the numbers measure
hashing, not the disk), the same piece length for everyone (auto for the size unless
given), rounds alternating which side goes first; each figure is the best round. Both
creators make a hybrid torrent; ours is also timed for v1 (SHA-1 only). As a check the
hybrid info dicts must be byte-identical. MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import libtorrent as lt

from swarmhub.metainfo import TorrentVersion, auto_piece_length, create_torrent

__all__ = ["main"]

MiB = 1 << 20


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            fh.write(chunk)
            left -= len(chunk)


def lt_create(path: Path, piece_length: int) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fs = lt.file_storage()
        lt.add_files(fs, str(path))
        t = lt.create_torrent(fs, piece_length, flags=0)
        lt.set_piece_hashes(t, str(path.parent))
        info: bytes = lt.torrent_info(lt.bencode(t.generate())).info_section()
        return info


def timed(fn: Callable[[], bytes]) -> tuple[float, bytes]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="file size in MiB (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--piece-kib", type=int, default=0, help="piece length (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="our hashing threads")
    args = parser.parse_args()

    size = args.size * MiB
    piece_length = args.piece_kib * 1024 or auto_piece_length(size)
    with tempfile.TemporaryDirectory(prefix="swarmhub-bench-") as tmp:
        path = Path(tmp) / "data.bin"
        write_random(path, size)

        def ours(version: TorrentVersion) -> Callable[[], bytes]:
            return lambda: (
                create_torrent(
                    path, version=version, piece_length=piece_length, threads=args.threads
                ).info_bytes
            )

        results: dict[str, float] = {"lt hybrid": 0.0, "ours hybrid": 0.0, "ours v1": 0.0}
        infos: dict[str, bytes] = {}
        for r in range(args.rounds):
            order = ["lt hybrid", "ours hybrid", "ours v1"]
            if r % 2:
                order.reverse()
            for label in order:
                fn = (
                    (lambda: lt_create(path, piece_length))
                    if label == "lt hybrid"
                    else ours(
                        TorrentVersion.HYBRID if label == "ours hybrid" else TorrentVersion.V1
                    )
                )
                seconds, infos[label] = timed(fn)
                if not results[label] or seconds < results[label]:
                    results[label] = seconds

    if infos["lt hybrid"] != infos["ours hybrid"]:
        print("WARNING: hybrid info dicts differ between libtorrent and swarmhub")
    print(
        f"create_torrent, {args.size} MiB file, piece {piece_length // 1024} KiB, "
        f"{os.cpu_count()} cores, best of {args.rounds}"
    )
    for label, seconds in results.items():
        print(f"  {label:12s} {seconds:7.3f} s  {size / seconds / 1e6:8.1f} MB/s")
    ratio = results["lt hybrid"] / results["ours hybrid"]
    print(f"  ours/libtorrent (hybrid, speed ratio): {ratio:.2f}")


if __name__ == "__main__":
    main()
