"""``--serve``: an HTTP client reads a file with ranges while it is still downloading.

The seeder is a real ``swarmhub seed`` process, rate-limited (and not super-seeding, so
it shows every piece at once) so the download is really in progress; the downloader runs
in this process through the engine API so the test can look at which pieces it holds.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from interop.harness import VENV_PYTHON, Proc, make_test_data
from swarmhub.engine.session import Session
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.serve import StreamServer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

PIECE = 32 * 1024
SIZES = [100_000, 2_000_000, 50_000]  # serve the middle file; edges are shared pieces


async def poll(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (bounded) until ``cond()`` holds."""
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_ranges_while_downloading_and_a_seek_to_the_end_comes_first(
        tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", SIZES, seed=31)
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    body = (data / "file_001.bin").read_bytes()
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "seedstate"),
               SWARMHUB_SUPER_SEEDING="false")
    seed = Proc([str(VENV_PYTHON), "-m", "swarmhub", "seed", str(tfile), str(data),
                 "--listen", "127.0.0.1:0", "--upload-limit", "256", "--json"],
                env=env, cwd=tmp_path, name="seed", log=tmp_path / "seed.log")
    with seed:
        line = seed.wait_for_line(lambda s: '"event": "listening"' in s, 60)
        port = int(json.loads(line)["port"])
        async with Session(state_dir=tmp_path / "state") as session:
            await session.listen("127.0.0.1", 0)
            t = await session.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)],
                                  file_priorities=[0, 1, 0], sequential=True)
            server = StreamServer(t)
            await server.start()
            try:
                url = server.file_url(1)
                n = meta.num_pieces
                middle = (meta.data_files[1].offset + len(body) // 2) // PIECE
                # state, not time: a few pieces in, far from done
                await poll(lambda: t.num_have >= 2, 60, "first pieces")
                assert t.num_have < n // 2
                async with aiohttp.ClientSession() as http:
                    async with http.get(url, headers={"Range": "bytes=-1000"}) as resp:
                        tail = await resp.read()
                        assert resp.status == 206
                        assert resp.headers["Content-Range"] == \
                            f"bytes {len(body) - 1000}-{len(body) - 1}/{len(body)}"
                    assert tail == body[-1000:]
                    assert not t.have[middle], "the seek waited for the middle"
                    assert not t.complete.is_set()
                    async with http.get(url, headers={"Range": "bytes=5000-"}) as resp:
                        assert resp.status == 206
                        rest = await resp.read()
                    assert rest == body[5000:]
                    async with http.get(url) as resp:
                        assert resp.status == 200
                        assert resp.headers["Accept-Ranges"] == "bytes"
                        assert await resp.read() == body
                    async with http.get(server.url + "0/file_000.bin") as resp:
                        assert resp.status == 404  # not chosen: not served
                await poll(t.complete.is_set, 60, "download finished")
                assert not (tmp_path / "dl" / data.name / "file_000.bin").exists()
                assert not (tmp_path / "dl" / data.name / "sub").exists()
            finally:
                await server.stop()


def test_get_serve_through_the_cli(tmp_path: Path) -> None:
    """``get --serve PORT`` (loopback by default) answers a range with the exact bytes
    while the download runs, and keeps serving after it finished."""
    import re
    import urllib.request

    from interop.harness import free_port

    data = make_test_data(tmp_path / "src", [1_500_000], seed=32, name="movie.mkv")
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    body = data.read_bytes()
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"),
               SWARMHUB_SUPER_SEEDING="false")
    swarmhub = [str(VENV_PYTHON), "-m", "swarmhub"]
    with Proc([*swarmhub, "seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
               "--upload-limit", "300", "--json"], env=env, cwd=tmp_path, name="seed",
              log=tmp_path / "seed.log") as seed:
        line = seed.wait_for_line(lambda s: '"event": "listening"' in s, 60)
        port = int(json.loads(line)["port"])
        http_port = free_port()
        with Proc([*swarmhub, "get", str(tfile), "-o", str(tmp_path / "dl"), "--json",
                   "--peer", f"127.0.0.1:{port}", "--serve", str(http_port)],
                  env=env, cwd=tmp_path, name="get", log=tmp_path / "get.log") as get:
            served = get.wait_for_line(lambda s: "serving movie.mkv at" in s, 60)
            url = re.findall(r"http://\S+", served)[0]
            assert url == f"http://127.0.0.1:{http_port}/"
            get.wait_for_line(lambda s: s.startswith('{"t"') and
                              0 < json.loads(s)["progress"] < 0.5, 60)
            req = urllib.request.Request(url + "0/movie.mkv",
                                         headers={"Range": "bytes=1000000-1099999"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert resp.status == 206
                assert resp.read() == body[1_000_000:1_100_000]
            get.wait_for_line(lambda s: "still serving" in s, 60)
            with urllib.request.urlopen(url + "0/movie.mkv", timeout=30) as resp:
                assert resp.read() == body


async def test_a_player_that_hangs_up_gives_back_its_priority_boost(tmp_path: Path) -> None:
    """No peers: the read waits; when the client goes away, the pieces it raised return
    to their files' priority (old seeks must not keep jumping the queue)."""
    data = make_test_data(tmp_path / "src", [300_000], seed=33, name="a.bin")
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE)
    last = meta.num_pieces - 1
    async with Session(state_dir=tmp_path / "state") as session:
        t = await session.add(meta, tmp_path / "dl")
        server = StreamServer(t)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:

                async def read_tail() -> bytes:
                    async with http.get(server.file_url(0),
                                        headers={"Range": "bytes=-10"}) as resp:
                        return await resp.read()

                reader = asyncio.create_task(read_tail())
                await poll(lambda: t.picker.priority(last) == 7, 10, "the boost")
                assert not reader.done()  # waiting: nobody can send the piece
                reader.cancel()  # the player hangs up
                with pytest.raises(asyncio.CancelledError):
                    await reader
            await poll(lambda: t.picker.priority(last) == 1, 10, "the boost given back")
            assert t.picker.priority(0) == 1
        finally:
            await server.stop()
