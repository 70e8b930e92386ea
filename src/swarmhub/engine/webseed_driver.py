"""Driving a torrent's BEP 19 web seeds: one fetch loop per URL while it downloads.

Apart from the driver (:mod:`swarmhub.engine.torrent`) and from the HTTP client
(:mod:`swarmhub.engine.webseed`): the core picks the pieces (peers first), the client
fetches byte ranges; this loop joins them — batches (the next asked for once the last
one's bodies arrived), hashing overlapped with the stream (runs of adjacent pieces per
thread-pool call), strikes, back-off after errors and busy replies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import socket
import urllib.parse
from typing import TYPE_CHECKING, Protocol

from swarmhub.engine.pieces import Pieces
from swarmhub.engine.services import DriverHost
from swarmhub.engine.status import TorrentState
from swarmhub.errors import InconsistentHashesError, StorageError

if TYPE_CHECKING:
    from swarmhub.engine.tracker_driver import TrackerDriver
    from swarmhub.engine.webseed import Run, WebSeed

__all__ = ["WebSeedDriver", "WebSeedHost"]

log = logging.getLogger(__name__)

#: Bytes of adjacent pieces hashed in one thread-pool call and written in one go (at least
#: a piece): per-piece calls cost more than the hashing with small pieces. 4 MiB runs made
#: fewer hand-offs but a longer tail after the last byte, and were slower on a loaded
#: 2-core machine (64 MiB from a loopback hub, 12 alternating rounds at load 8.5: median
#: 0.37 s against 0.34-0.36 s).
_RUN_BYTES = 1 << 20
#: Bytes of runs being hashed and written while the stream goes on: enough that a hashing
#: thread woken late (a busy machine) does not stall the stream, which stops reading once
#: this much waits (bounded memory).
_INFLIGHT_BYTES = 8 << 20


def _reap(futs: set[asyncio.Future[None]]) -> None:
    """Take the finished futures out of ``futs``, raising the first one's error."""
    for fut in [f for f in futs if f.done()]:
        futs.discard(fut)
        fut.result()


class WebSeedHost(DriverHost, Protocol):
    """What the web-seed loops need from their torrent besides the :class:`DriverHost`."""

    #: its announces (the loop wakes at an answer)
    tracker: TrackerDriver

    def _piece_done(self, index: int) -> None:
        """Wake whoever waits for piece ``index`` (verified and written)."""
        ...


class WebSeedDriver:
    """The web-seed loops of one torrent (:meth:`loop`, a task per URL), sharing the
    pieces they have in flight so two web seeds never fetch the same one."""

    def __init__(self, torrent: WebSeedHost, pieces: Pieces) -> None:
        self.torrent = torrent
        self.pieces = pieces
        self._ws_reserved: set[int] = set()

    async def loop(self, url: str) -> None:
        """Fetch what the core picks (Swarm.webseed_batch) from one web seed.

        Batches overlap: the next one is asked for as soon as the current one's bodies
        arrived (Swarm.webseed_arrived), while its runs are still hashed and written (each
        batch's pieces stay reserved until its last run is handled: :meth:`_settle`).
        The runs in flight over all batches stay within ``depth`` (bounded memory); in
        turn, every batch paid a hash -> disk -> event loop hand-off before the next
        request went out (64 MiB from a loopback hub: ~16 ms of a 0.25 s get)."""
        from swarmhub.engine.webseed import (  # late: only a torrent with web seeds
            WebSeed,
            WebSeedBusy,
            WebSeedError,
        )

        t = self.torrent
        ws = WebSeed(url, t.meta, await t.session.http(),
                     max_request=t.settings.web_seed_request_size)
        await self._origin(url)
        failures, backoff = 0, 5.0
        threads = t.settings.hash_threads or os.cpu_count() or 1
        depth = max(threads + 1, _INFLIGHT_BYTES // _RUN_BYTES)
        runs: set[asyncio.Future[None]] = set()  # being hashed and written, all batches
        batches: set[asyncio.Future[None]] = set()  # each settles (releases) one batch
        seq = 0
        try:
            # The core picks (Swarm.webseed_batch): nothing during the grace for peers
            # unless the tracker says we are alone; then everything missing at full speed,
            # else only small batches of what the swarm lacks or cannot deliver.
            while t.state is TorrentState.DOWNLOADING and not t._stopping and not ws.banned:
                _reap(batches)
                t.tracker.answered.clear()
                source = f"{url}#{seq}"
                batch = t.swarm.webseed_batch(t.clock(), self._ws_reserved, source=source)
                if not batch:
                    if batches:  # what is left may be in a batch still being checked
                        await asyncio.wait(batches, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    # Not ready: the tracker's answer is due (asking again sooner raced the
                    # other leechers' first connections: a swarm's first client took the
                    # whole file over HTTP), unless it lists only the origin's own peer
                    # (then at once). Ready, each poll scans the pieces: alone, a piece a
                    # peer gives back must not wait long; in a swarm there is no hurry.
                    sw = t.swarm
                    if not sw.webseed_ready(t.clock()):
                        await self._await_answer(0.02)
                    else:
                        await self._sleep(0.05 if sw.webseed_alone() else 0.5)
                    continue
                log.info("%s: web seed: %d pieces from piece %d (%s; %d peers, %s tracker "
                         "leechers)", t.meta.name, len(batch), batch[0], t.swarm.webseed_why,
                         len(t.swarm.peers), t.swarm.tracker_leechers)
                seq += 1
                self._ws_reserved.update(batch)
                # Alone: ranges sized from the web seed's rate (one long range, not many).
                ws.max_request = t.swarm.webseed_request_bytes()
                pause, failed = 0.0, True
                mine: list[asyncio.Future[None]] = []
                before = ws.bytes_downloaded
                # Taken alone, the batch ends where its body stands once we are not
                # (Swarm.webseed_cut): the rest goes back to the peers.
                def cut(source: str = source) -> bool:
                    return t.swarm.webseed_cut(source)

                try:
                    async with contextlib.aclosing(ws.fetch_runs(batch, _RUN_BYTES, cut)) as it:
                        async for run in it:
                            while len(runs) >= depth:
                                await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
                            fut = asyncio.ensure_future(self._run(ws, run))
                            runs.add(fut)
                            fut.add_done_callback(runs.discard)
                            mine.append(fut)
                    t.swarm.webseed_arrived(t.clock(), ws.bytes_downloaded - before,
                                            source=source)
                    failures, backoff, failed = 0, 5.0, False
                except WebSeedBusy as exc:
                    log.info("%s: web seed busy, retrying in %.0f s", t.meta.name,
                             exc.retry_after)
                    pause = min(exc.retry_after, 60.0)
                except WebSeedError as exc:
                    failures += 1
                    log.warning("%s: %s", t.meta.name, exc)
                    if failures >= 10:
                        return
                    pause, backoff = backoff, min(backoff * 2, 300.0)
                finally:
                    settle = asyncio.ensure_future(self._settle(ws, source, batch, mine, failed))
                    batches.add(settle)
                if pause:
                    # first: a dead web seed must not hold its pieces from the peers
                    await asyncio.wait([settle])
                    await self._sleep(pause)
        except (StorageError, InconsistentHashesError) as exc:
            t._fail(str(exc))
        finally:
            # every run started is handled and every batch released, even when cancelled
            if batches:
                await asyncio.gather(*batches, return_exceptions=True)

    async def _settle(self, ws: WebSeed, source: str, batch: list[int],
                      mine: list[asyncio.Future[None]], failed: bool) -> None:
        """Once every run of a batch is hashed and written: release the batch (what it
        did not deliver goes back to the peers), then raise the first run's error."""
        t = self.torrent
        try:
            done = await asyncio.gather(*mine, return_exceptions=True)
        finally:
            self._ws_reserved.difference_update(batch)
            t.swarm.webseed_release(t.clock(), source=source, failed=failed or ws.banned)
            t._flush()
        for result in done:
            if isinstance(result, BaseException):
                raise result

    async def _origin(self, url: str) -> None:
        """Tell the core the web seed host's IPs: a peer there is the origin's own seeder
        (the hub's), which a lone downloader leaves idle while HTTP serves it
        (Swarm.webseed_preferred). Unresolvable: no origin, the plain hybrid policy."""
        host = urllib.parse.urlsplit(url).hostname
        if not host:
            return
        try:  # an address already (a hub URL often is): no resolver thread to wait for
            addrs = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                log.debug("web seed %s: no address for its host: %s", url, exc)
                return
            addrs = [str(info[4][0]) for info in infos]
        t = self.torrent
        t.swarm.webseed_origin(addrs, t.clock())

    async def _run(self, ws: WebSeed, run: Run) -> None:
        """Hash and write a run of adjacent pieces a web seed delivered (Pieces.check_write:
        each piece checked on its own, by one hash (PieceVerifier); one write per stretch
        of good pieces; several runs overlap the stream)."""
        t = self.torrent
        first, count, buf = run
        if ws.banned or all(t.swarm.have[first:first + count]):
            return
        done: concurrent.futures.Future[list[bool]] = concurrent.futures.Future()
        self.pieces.check_write(first, count, buf, done, list)
        ok = await asyncio.wrap_future(done)
        ws.recycle(buf)
        # Per piece (1,024 in a 64 MiB hub file): sizes from the piece length, no lookups
        # through the torrent (the loop's time between two runs' bodies).
        now, swarm, buffers = t.clock(), t.swarm, self.pieces.buffers
        pl, last = t.meta.piece_length, t.meta.num_pieces - 1
        for k, good in enumerate(ok):
            index = first + k
            if swarm.have[index]:
                continue  # a peer's copy passed meanwhile
            if good:
                buffers.pop(index, None)
                swarm.webseed_piece(index, pl if index < last else t.meta.piece_size(index),
                                    now)
                t._piece_done(index)
            else:
                swarm.hash_failures += 1
                ws.strike(index)
        t._flush()

    async def _await_answer(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the tracker's answer lists only the origin's
        own peer (Swarm.webseed_origin_only): the lone downloader of a hub file starts
        at the answer, not at the next look."""
        t = self.torrent
        end = t.clock() + seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(t.tracker.answered.wait(), seconds)
        if not t.swarm.webseed_origin_only(t.clock()):
            await self._sleep(end - t.clock())

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the torrent stops or completes."""
        t = self.torrent
        end = t.clock() + seconds
        while not t._stopping and t.state is TorrentState.DOWNLOADING:
            left = end - t.clock()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))
