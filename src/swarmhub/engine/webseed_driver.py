"""Driving a torrent's BEP 19 web seeds: one fetch loop per URL while it downloads.

Apart from the driver (:mod:`swarmhub.engine.torrent`) and from the HTTP client
(:mod:`swarmhub.engine.webseed`): the core picks the pieces (peers first), the client
fetches byte ranges; this loop joins them — grace period, batches, hash checks, strikes,
back-off after errors and busy replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from swarmhub.engine.pieces import Pieces
from swarmhub.engine.services import DriverHost
from swarmhub.engine.status import TorrentState
from swarmhub.errors import StorageError

__all__ = ["WebSeedDriver", "WebSeedHost"]

log = logging.getLogger(__name__)


class WebSeedHost(DriverHost, Protocol):
    """What the web-seed loops need from their torrent besides the :class:`DriverHost`."""

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
        """Fetch what the core picks from one web seed while downloading; peers first."""
        from swarmhub.engine.webseed import WebSeed, WebSeedBusy, WebSeedError  # aiohttp: late

        t = self.torrent
        ws = WebSeed(url, t.meta, await t.session.http(),
                     max_request=t.settings.web_seed_request_size)
        await self._sleep(t.settings.web_seed_grace)
        failures, backoff = 0, 5.0
        # With no leecher among the connected peers there is nobody to trade with, and
        # nothing the peers could later spare the web seed: it takes any missing piece
        # then, not only what the swarm lacks (a web seed that sat unused while the hub's
        # slow seed trickled made hybrid the slow choice). A super-seeding seed hides its
        # pieces, so peers count as seeds too while the tracker counts as many seeds as
        # we have peers. With leechers around, peers come first and the web seed fills
        # what the swarm lacks.
        while t.state is TorrentState.DOWNLOADING and not t._stopping and not ws.banned:
            sw = t.swarm
            alone = (sw.tracker_seeds >= len(sw.peers)
                     or all(ps.is_seed for ps in sw.peers.values()))
            batch = sw.webseed_batch(t.clock(), self._ws_reserved, anything=alone)
            if not batch:
                await self._sleep(0.5)
                continue
            self._ws_reserved.update(batch)
            try:
                async with contextlib.aclosing(ws.fetch(batch)) as pieces:
                    async for index, buf in pieces:
                        if t.swarm.have[index]:
                            continue
                        ok, _ = await self.pieces.check_and_write(index, buf, False)
                        if ok:
                            self.pieces.buffers.pop(index, None)
                            t.swarm.webseed_piece(index, len(buf), t.clock())
                            t._piece_done(index)
                            t._flush()
                        else:
                            t.swarm.hash_failures += 1
                            if ws.strike(index):
                                break
                failures, backoff = 0, 5.0
            except WebSeedBusy as exc:
                log.info("%s: web seed busy, retrying in %.0f s", t.meta.name, exc.retry_after)
                await self._sleep(min(exc.retry_after, 60.0))
            except WebSeedError as exc:
                failures += 1
                log.warning("%s: %s", t.meta.name, exc)
                if failures >= 10:
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, 300.0)
            except StorageError as exc:
                t._fail(str(exc))
                return
            finally:
                self._ws_reserved.difference_update(batch)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the torrent stops or completes."""
        t = self.torrent
        end = t.clock() + seconds
        while not t._stopping and t.state is TorrentState.DOWNLOADING:
            left = end - t.clock()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))
