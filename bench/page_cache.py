"""CPU of writing a download's 32 KiB pieces: through the page cache vs O_DIRECT.

On a VM whose host backs a guest page only when it is first touched, a page-cache write
into fresh pages costs several times one into pages used before, and a download fills
fresh pages (a netns lab run writes ~1 GiB of them: 32 peers x 32 MiB). This writes
``--mib`` MiB of 32 KiB pieces from a page-aligned buffer into one new file, both ways,
and prints the CPU per write (thread time, so the device's wait is not counted) per 256 MiB
and its mean, plus the wall time per write (O_DIRECT waits for the device)::

    .venv/bin/python bench/page_cache.py [--mib 1024] [--dir DIR] [--modes buffered,direct]

``--dir`` must be on a disk file system (tmpfs refuses O_DIRECT). The file is removed.
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile
import time

PIECE = 32 * 1024
CHUNK = 256 * 1024 * 1024 // PIECE


def run(folder: str, mib: int, direct: bool) -> str:
    path = os.path.join(folder, f".page_cache_bench.{os.getpid()}")
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o600)
    buf = mmap.mmap(-1, PIECE)  # page-aligned, as the engine's piece buffers
    buf[:] = os.urandom(PIECE)
    view = memoryview(buf)
    n = mib * 1024 * 1024 // PIECE
    per_chunk: list[str] = []
    cpu_total = 0.0
    wall0 = time.perf_counter()
    try:
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            t0 = time.thread_time()
            for i in range(start, start + count):
                os.pwrite(fd, view, i * PIECE)
            cpu = time.thread_time() - t0
            cpu_total += cpu
            per_chunk.append(f"{1e6 * cpu / count:.0f}")
    finally:
        os.close(fd)
        os.unlink(path)
    wall = time.perf_counter() - wall0
    return (f"{'direct' if direct else 'buffered':8s} us CPU per 32 KiB write, per 256 MiB: "
            f"{' '.join(per_chunk)}; mean {1e6 * cpu_total / n:.0f} (wall {1e6 * wall / n:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--modes", default="buffered,direct")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        print(run(args.dir, args.mib, mode == "direct"), flush=True)


if __name__ == "__main__":
    main()
