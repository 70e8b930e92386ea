"""A real hub and two of our clients dial each other at once: one connection survives.

The hub's seeder dials every announcer while the announcer dials the seeder it got from
the tracker (and the two clients dial each other): each end used to refuse the second
connection as a duplicate and close the first on the other's refusal, so both were lost
and the client waited for a redial (issue 9). Both ends now keep the connection the lower
peer id opened (``Swarm.can_accept``). Checked on state, sampled while downloading: per
remote peer at most one live connection, and the hub's seeder, once connected, stays
connected until the download completes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from interop.harness import make_test_data
from interop.test_hub_modes import publish, start_hub
from swarmhub.client import hub_file, hub_torrent, parse_hub_url
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import Torrent
from swarmhub.metainfo import load_torrent
from swarmhub.settings import Settings

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]


def _live(t: Torrent) -> Counter[bytes]:
    """Live connections of ``t`` per remote peer id."""
    return Counter(ps.peer_id for ps in t.swarm.peers.values() if not ps.closed)


async def test_the_hub_and_two_clients_dialling_each_other_keep_one_connection(
        tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    try:
        data = make_test_data(tmp_path / "src", [6_000_000], seed=31)
        url = publish(hub, data, tmp_path)
        # Slow enough that the race and the time after it are seen while downloading.
        slow = Settings(download_rate_limit=1_000_000, pex=False, dht=False)
        async with Session(slow, state_dir=tmp_path / "sa") as a, \
                Session(slow, state_dir=tmp_path / "sb") as b:
            for s in (a, b):
                await s.listen("127.0.0.1", 0)
            http = await a.http()
            base, file_id = parse_hub_url(url)
            info = await hub_file(http, base, file_id, None)
            meta = load_torrent(await hub_torrent(http, info.torrent_url, None))
            meta = dataclasses.replace(meta, url_list=())  # peers only: connections matter
            ta = await a.add(meta, tmp_path / "a")
            tb = await b.add(meta, tmp_path / "b")
            clients = {a.peer_id, b.peer_id}
            most: Counter[bytes] = Counter()
            hub_seen: dict[int, bool] = {}
            lost: list[str] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 180
            while not (ta.complete.is_set() and tb.complete.is_set()):
                assert loop.time() < deadline, (ta.status(), tb.status())
                for k, t in enumerate((ta, tb)):
                    if t.complete.is_set():
                        continue
                    live = _live(t)
                    for pid, n in live.items():
                        most[pid] = max(most[pid], n)
                    on_hub = any(pid not in clients for pid in live)
                    if hub_seen.get(k) and not on_hub:
                        lost.append(f"client {k} lost the hub's seeder")
                    hub_seen[k] = hub_seen.get(k, False) or on_hub
                await asyncio.sleep(0.005)
            assert ta.error is None and tb.error is None
            assert hub_seen == {0: True, 1: True}
            assert not lost, lost
            assert most and max(most.values()) == 1, most  # never two to one peer for long
    finally:
        hub.proc.stop()
    for name in ("a", "b"):
        assert (tmp_path / name / data.name).read_bytes() == data.read_bytes()


class _Barrier:
    """TCP forwarders that hold both connections until both are open, then pass bytes
    both ways at once: two peers that dial each other see each other's handshake at the
    same moment, the race that used to cost both connections."""

    def __init__(self) -> None:
        self.opened = 0
        self.both = asyncio.Event()
        self.servers: list[asyncio.Server] = []

    async def forward_to(self, port: int) -> int:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection("127.0.0.1", port)
            self.opened += 1
            if self.opened >= 2:
                self.both.set()
            await self.both.wait()
            await asyncio.gather(_pipe(r, uw), _pipe(ur, w), return_exceptions=True)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for s in self.servers:
            s.close()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while chunk := await r.read(65536):
            w.write(chunk)
            await w.drain()
    finally:
        w.close()


async def test_two_clients_whose_handshakes_cross_keep_exactly_one_connection(
        tmp_path: Path) -> None:
    """Each client dials the other (through the barrier) while the hub's seeder feeds
    both: without the rule each end accepted the incoming handshake first, refused its
    own dial as a duplicate, and the other end's refusal closed what it had kept."""
    hub = start_hub(tmp_path)
    barrier = _Barrier()
    try:
        data = make_test_data(tmp_path / "src", [3_000_000], seed=32)
        url = publish(hub, data, tmp_path)
        plain = Settings(download_rate_limit=500_000, pex=False, dht=False, encryption="off")
        async with Session(plain, state_dir=tmp_path / "sa") as a, \
                Session(plain, state_dir=tmp_path / "sb") as b:
            pa = await a.listen("127.0.0.1", 0)
            pb = await b.listen("127.0.0.1", 0)
            http = await a.http()
            base, file_id = parse_hub_url(url)
            info = await hub_file(http, base, file_id, None)
            meta = load_torrent(await hub_torrent(http, info.torrent_url, None))
            meta = dataclasses.replace(meta, url_list=(), trackers=())  # only these dials
            to_b, to_a = await barrier.forward_to(pb), await barrier.forward_to(pa)
            seeder = ("127.0.0.1", hub.peer_port)
            ta = await a.add(meta, tmp_path / "a", peers=[("127.0.0.1", to_b), seeder])
            tb = await b.add(meta, tmp_path / "b", peers=[("127.0.0.1", to_a), seeder])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            seen_a = seen_b = gap = False
            while not (ta.complete.is_set() or tb.complete.is_set()):
                assert loop.time() < deadline, (ta.status(), tb.status())
                n_a, n_b = _live(ta)[b.peer_id], _live(tb)[a.peer_id]
                assert n_a <= 1 and n_b <= 1, (n_a, n_b)
                seen_a, seen_b = seen_a or n_a > 0, seen_b or n_b > 0
                if seen_a and seen_b and n_a == 0 and n_b == 0:
                    gap = True  # both ends lost the connection: only a redial helps
                await asyncio.sleep(0.005)
            assert barrier.both.is_set() and seen_a and seen_b and not gap
            await asyncio.wait_for(asyncio.gather(ta.complete.wait(), tb.complete.wait()), 120)
            assert ta.error is None and tb.error is None
    finally:
        barrier.close()
        hub.proc.stop()
    for name in ("a", "b"):
        assert (tmp_path / name / data.name).read_bytes() == data.read_bytes()
