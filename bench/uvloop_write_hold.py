"""Does uvloop still hold a write's buffer after it reports the write buffer empty?

    .venv/bin/python bench/uvloop_write_hold.py [--writes 200] [--mib 8]

Why (bench/README.md, "mem-48"): the seeder's read gate trusts
``transport.get_write_buffer_size()`` to say how many reply bytes are still held. uvloop
counts libuv's write queue, but releases a write's buffers only in the write callback, in
the next loop iteration: a write the socket took during ``uv_write`` already counts 0
while its buffer is still referenced. The script writes ``--writes`` bytearrays of
``--mib`` MiB into a socket that ``dd`` drains in another process, and after each write
asks the size and whether the bytearray is still exported (resizing an exported
bytearray raises ``BufferError``). Loopback only; bounded by ``--writes``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess

import uvloop


async def run(writes: int, size: int) -> tuple[int, int]:
    ours, theirs = socket.socketpair()
    reader = subprocess.Popen(["dd", "bs=1M", "of=/dev/null", "status=none"],
                              stdin=theirs.fileno())
    theirs.close()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    transport.set_write_buffer_limits(high=size // 2, low=size // 8)
    held = held_at_zero = 0
    try:
        for _ in range(writes):
            buf = bytearray(size)
            transport.write(buf)
            queued = transport.get_write_buffer_size()
            try:
                buf.append(0)
            except BufferError:  # the transport still holds a view of it
                held += 1
                held_at_zero += queued == 0
            for _ in range(10_000):  # until it drains (bounded: dd reads ~GB/s)
                await asyncio.sleep(0.001)
                if transport.get_write_buffer_size() == 0:
                    break
    finally:
        transport.close()  # takes effect in a later loop iteration: then dd sees the end
        await loop.run_in_executor(None, reader.wait, 30)
    return held, held_at_zero


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--mib", type=int, default=8)
    args = ap.parse_args()
    held, at_zero = uvloop.run(run(args.writes, args.mib << 20))
    print(f"{args.writes} writes of {args.mib} MiB: still held right after the write in {held}, "
          f"{at_zero} of them while get_write_buffer_size() was already 0")


if __name__ == "__main__":
    main()
