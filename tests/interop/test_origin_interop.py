"""curl and aria2 download from our origin: full, ranges, resume, multi-range, segmented.

The origin is :func:`make_static_app` on 127.0.0.1 in the test's event loop; the clients run
as child processes (asyncio subprocesses, so the loop keeps serving) with hard timeouts.
Every download must be byte-identical to the source file.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conftest import need_tool
from swarmhub.hub.origin import ORIGIN_LIMITER_KEY, OriginLimiter, make_static_app

pytestmark = pytest.mark.interop

SIZE = 5 * (1 << 20) + 12_345  # a few MiB, not a multiple of anything
TIMEOUT = 60.0


@dataclass
class Served:
    server: TestServer
    root: Path
    data: bytes
    ranges_seen: list[str | None] = field(default_factory=list)

    def url(self, name: str = "data.bin") -> str:
        return str(self.server.make_url(f"/{name}"))

    @property
    def limiter(self) -> OriginLimiter:
        assert self.server.app is not None
        return self.server.app[ORIGIN_LIMITER_KEY]


@pytest.fixture
def origin_limiter() -> OriginLimiter:
    return OriginLimiter()


@pytest.fixture
async def served(tmp_path: Path, origin_limiter: OriginLimiter) -> AsyncIterator[Served]:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "data.bin").write_bytes(data)
    app = make_static_app(root, limiter=origin_limiter)
    s = Served(TestServer(app), root, data)

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "GET":
            s.ranges_seen.append(request.headers.get("Range"))

    app.on_response_prepare.append(record)
    await s.server.start_server()
    try:
        yield s
    finally:
        await s.server.close()


async def run(*argv: str, cwd: Path | None = None) -> bytes:
    """Run a client to completion (bounded); its stdout, or fail with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}: {err.decode()[-2000:]}"
    return out


async def test_curl_full_download(served: Served, tmp_path: Path) -> None:
    curl = need_tool("curl")
    out = tmp_path / "full.bin"
    await run(curl, "-sS", "--fail", "-o", str(out), served.url())
    assert out.read_bytes() == served.data
    assert served.ranges_seen == [None]


async def test_curl_single_range(served: Served, tmp_path: Path) -> None:
    curl = need_tool("curl")
    out = tmp_path / "part.bin"
    headers = tmp_path / "headers.txt"
    await run(curl, "-sS", "--fail", "-r", "1000-1999", "-D", str(headers), "-o", str(out),
              served.url())  # fmt: skip
    assert out.read_bytes() == served.data[1000:2000]
    head = headers.read_text()
    assert head.startswith("HTTP/1.1 206")
    assert f"Content-Range: bytes 1000-1999/{SIZE}" in head


async def test_curl_resumes_truncated_file(served: Served, tmp_path: Path) -> None:
    curl = need_tool("curl")
    out = tmp_path / "resume.bin"
    cut = 2 * (1 << 20) + 777
    out.write_bytes(served.data[:cut])  # an interrupted earlier download
    await run(curl, "-sS", "--fail", "-C", "-", "-o", str(out), served.url())
    assert out.read_bytes() == served.data
    assert served.ranges_seen == [f"bytes={cut}-"]


async def test_curl_multi_range(served: Served, tmp_path: Path) -> None:
    curl = need_tool("curl")
    headers = tmp_path / "headers.txt"
    body = await run(curl, "-sS", "--fail", "-r", "0-99,4096-8191,-10", "-D", str(headers),
                     served.url())  # fmt: skip
    m = re.search(r"Content-Type: multipart/byteranges; boundary=(\S+)", headers.read_text())
    assert m is not None
    delim = b"--" + m.group(1).encode()
    chunks = body.split(delim)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    got = []
    for chunk in chunks[1:-1]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        rng = re.search(rb"Content-Range: bytes (\d+)-(\d+)/(\d+)", head)
        assert rng is not None
        start, last, total = (int(x) for x in rng.groups())
        assert total == SIZE
        payload = payload.removesuffix(b"\r\n")
        assert payload == served.data[start : last + 1]
        got.append((start, last + 1))
    assert got == [(0, 100), (4096, 8192), (SIZE - 10, SIZE)]


# paced at 10 MB/s so the first connection is still busy when aria2 opens the others
@pytest.mark.parametrize("origin_limiter", [OriginLimiter(upload_rate=10_000_000)])
async def test_aria2_segmented_download(served: Served, tmp_path: Path) -> None:
    aria2c = need_tool("aria2c")
    outdir = tmp_path / "aria"
    outdir.mkdir()
    await run(
        aria2c,
        "-x4",
        "-s4",
        "--min-split-size=1M",
        "--enable-dht=false",
        "--bt-enable-lpd=false",
        "--allow-overwrite=true",
        "--file-allocation=none",
        "--console-log-level=warn",
        "--summary-interval=0",
        "--timeout=20",
        "--max-tries=2",
        "-d",
        str(outdir),
        "-o",
        "got.bin",
        served.url(),
    )
    assert (outdir / "got.bin").read_bytes() == served.data
    ranged = [r for r in served.ranges_seen if r is not None]
    assert len(ranged) >= 2, served.ranges_seen  # it really fetched segments in parallel
    assert served.limiter.bytes_served >= SIZE
