"""``get --serve``: the growing files of a download over HTTP, with ranges, for a player.

``GET /`` lists the chosen files; ``GET /<index>/<name>`` (index as ``swarmhub info``
numbers files) answers with RFC 9110 ranges decided by the hub's pure
:func:`swarmhub.hub.ranges.evaluate` (a multi-range request gets the whole file, which
§14.2 allows). The body is sent piece by piece, and each part waits until its pieces are
verified: before waiting, the pieces are raised to the top priority (plus a short
read-ahead), so a player's seek to the end is served before the middle has arrived.
When the response ends (or the player hangs up to seek elsewhere) the pieces it raised
and did not get go back to their files' priority, unless another response still needs
them, so old seeks do not keep jumping the queue.
A wait lasts as long as the download does; if the torrent fails or stops, the response
is cut short (the client sees a short body, never wrong bytes).

Binds loopback unless told otherwise: this serves a local player, not the network.
"""

from __future__ import annotations

import asyncio
import collections
import html
import logging
import mimetypes
import urllib.parse

from aiohttp import web

from swarmhub.engine.torrent import Torrent
from swarmhub.errors import SwarmhubError
from swarmhub.hub.ranges import DecisionKind, evaluate
from swarmhub.metainfo.model import FileEntry

__all__ = ["READ_AHEAD_PIECES", "StreamServer"]

log = logging.getLogger(__name__)

#: Pieces past the one a reader waits for that are raised with it (the player reads on).
READ_AHEAD_PIECES = 4
#: Top priority for what a reader waits on; the read-ahead gets one less.
_NOW, _SOON = 7, 6


class StreamServer:
    """An aiohttp server for one torrent's chosen files (start, then stop)."""

    def __init__(self, torrent: Torrent, host: str = "127.0.0.1", port: int = 0) -> None:
        self.torrent = torrent
        self.host = host or "127.0.0.1"
        self.port = port
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_route("GET", r"/{index:\d+}", self._file)
        app.router.add_route("GET", r"/{index:\d+}/{name:.*}", self._file)
        # a player that hangs up (to seek) cancels its handler: its wait and boosts end
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=2.0)
        #: piece -> responses that raised it and are still running
        self._boosts: collections.Counter[int] = collections.Counter()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def file_url(self, index: int) -> str:
        name = self.torrent.meta.data_files[index].path[-1]
        return f"{self.url}{index}/{urllib.parse.quote(name)}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise SwarmhubError(
                f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}; "
                "choose another --serve HOST:PORT") from None
        server = site._server  # the bound port when 0 was asked for
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    def _chosen(self) -> list[int]:
        prios = self.torrent.file_priorities
        return [i for i, p in enumerate(prios) if p > 0]

    async def _index(self, request: web.Request) -> web.Response:
        files = self.torrent.meta.data_files
        rows = "".join(
            f'<li><a href="{html.escape(self.file_url(i))}">{i}: '
            f'{html.escape("/".join(files[i].path))}</a> ({files[i].length:,} bytes)</li>'
            for i in self._chosen())
        return web.Response(text=f"<ul>{rows}</ul>", content_type="text/html")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        index = int(request.match_info["index"])
        files = self.torrent.meta.data_files
        if index >= len(files) or index not in self._chosen():
            raise web.HTTPNotFound(text="no such chosen file\n")
        entry = files[index]
        etag = f'"{self.torrent.meta.info_hash.hex()}-{index}"'  # content fixed by the torrent
        decision = evaluate(request.method, request.headers, etag, 0.0, entry.length)
        if decision.kind is DecisionKind.MULTIPART:
            decision = evaluate(request.method, {}, etag, 0.0, entry.length)
        ctype = mimetypes.guess_type(entry.path[-1])[0] or "application/octet-stream"
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        if decision.kind not in (DecisionKind.FULL, DecisionKind.PARTIAL):
            for value in decision.content_ranges():
                headers["Content-Range"] = value
            return web.Response(status=decision.status, headers=headers)
        headers["Content-Type"] = ctype
        for value in decision.content_ranges():
            headers["Content-Range"] = value
        resp = web.StreamResponse(status=decision.status, headers=headers)
        resp.content_length = decision.body_bytes
        await resp.prepare(request)
        if request.method == "HEAD" or not decision.has_body:
            return resp
        for start, end in decision.ranges:
            try:
                await self._send_range(resp, entry, start, end)
            except SwarmhubError as exc:
                log.info("stream of %s cut short: %s", "/".join(entry.path), exc)
                break
        return resp

    async def _send_range(self, resp: web.StreamResponse, entry: FileEntry,
                          start: int, end: int) -> None:
        """Send file bytes ``start..end``, one piece-aligned chunk at a time, each once
        its pieces are verified."""
        t = self.torrent
        pl = t.meta.piece_length
        loop = asyncio.get_running_loop()
        pos = entry.offset + start  # piece space
        stop = entry.offset + end
        mine: set[int] = set()
        try:
            while pos < stop:
                chunk_end = min(stop, (pos // pl + 1) * pl)
                ahead_end = min(stop, chunk_end + READ_AHEAD_PIECES * pl)
                if ahead_end > chunk_end:
                    self._boost(mine, t.prioritize_range(chunk_end, ahead_end - chunk_end, _SOON))
                missing = t.prioritize_range(pos, chunk_end - pos, _NOW)
                self._boost(mine, missing)
                if missing:
                    await t.wait_pieces(missing)
                data = await loop.run_in_executor(
                    t.session.disk_pool, t.storage.read, pos, chunk_end - pos)
                await resp.write(data)
                pos = chunk_end
        finally:
            done = []
            for i in mine:
                self._boosts[i] -= 1
                if self._boosts[i] <= 0:
                    del self._boosts[i]
                    done.append(i)
            t.restore_priorities(i for i in done if not t.have[i])

    def _boost(self, mine: set[int], pieces: list[int]) -> None:
        for i in pieces:
            if i not in mine:
                mine.add(i)
                self._boosts[i] += 1
