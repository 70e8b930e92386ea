"""Driving a torrent's BEP 19 web seeds: one fetch loop per URL while it downloads.

Apart from the driver (:mod:`swarmhub.engine.torrent`) and from the HTTP client
(:mod:`swarmhub.engine.webseed`): the core picks the pieces (peers first), the client
fetches byte ranges; this loop joins them — batches, hashing overlapped with the stream,
strikes, back-off after errors and busy replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from typing import Any, Protocol

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
        """Fetch what the core picks (Swarm.webseed_batch) from one web seed."""
        from swarmhub.engine.webseed import (  # aiohttp: late
            WebSeed,
            WebSeedBusy,
            WebSeedError,
            overlapped,
        )

        t = self.torrent
        ws = WebSeed(url, t.meta, await t.session.http(),
                     max_request=t.settings.web_seed_request_size)
        failures, backoff = 0, 5.0
        # The core picks (Swarm.webseed_batch): nothing during the grace for peers unless
        # the tracker says we are alone; then everything missing at full speed, else only
        # small batches of what the swarm lacks or cannot deliver.
        while t.state is TorrentState.DOWNLOADING and not t._stopping and not ws.banned:
            batch = t.swarm.webseed_batch(t.clock(), self._ws_reserved, source=url)
            if not batch:
                sw = t.swarm  # each poll scans the pieces: not too often
                await self._sleep(0.02 if not sw.webseed_ready(t.clock())
                                  else 0.25 if sw.webseed_alone() else 0.5)
                continue
            self._ws_reserved.update(batch)
            pause = 0.0
            try:
                async with contextlib.aclosing(ws.fetch(batch)) as pieces:
                    await overlapped(pieces, functools.partial(self._piece, ws),
                                     (t.settings.hash_threads or os.cpu_count() or 1) + 1)
                failures, backoff = 0, 5.0
            except WebSeedBusy as exc:
                log.info("%s: web seed busy, retrying in %.0f s", t.meta.name, exc.retry_after)
                pause = min(exc.retry_after, 60.0)
            except WebSeedError as exc:
                failures += 1
                log.warning("%s: %s", t.meta.name, exc)
                if failures >= 10:
                    return
                pause, backoff = backoff, min(backoff * 2, 300.0)
            except StorageError as exc:
                t._fail(str(exc))
                return
            finally:
                # before any pause: a dead web seed must not hold its pieces from the peers
                self._ws_reserved.difference_update(batch)
                t.swarm.webseed_release(t.clock(), source=url)
                t._flush()
            if pause:
                await self._sleep(pause)

    async def _piece(self, ws: Any, item: tuple[int, bytearray]) -> None:
        """Hash and write one piece a web seed delivered (several overlap the stream)."""
        t = self.torrent
        index, buf = item
        if t.swarm.have[index] or ws.banned:
            return
        ok, _ = await self.pieces.check_and_write(index, buf, False)
        if t.swarm.have[index]:
            return  # a peer's copy passed meanwhile
        if ok:
            self.pieces.buffers.pop(index, None)
            t.swarm.webseed_piece(index, len(buf), t.clock())
            t._piece_done(index)
            t._flush()
        else:
            t.swarm.hash_failures += 1
            ws.strike(index)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the torrent stops or completes."""
        t = self.torrent
        end = t.clock() + seconds
        while not t._stopping and t.state is TorrentState.DOWNLOADING:
            left = end - t.clock()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))
