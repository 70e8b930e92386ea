"""The daemon's HTTP API (aiohttp): JSON in and out, ``{"error": ...}`` on failure, a
bearer token on every route but ``/api/openapi.yaml``, and events as Server-Sent Events.

The routes are described in ``openapi.yaml`` next to this file; tests validate answers
against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from swarmhub.daemon.manager import (
    BadRequest,
    Conflict,
    Manager,
    NotFound,
    Upstream,
    decode_torrent_field,
)
from swarmhub.errors import SwarmhubError
from swarmhub.hub.origin import json_errors_middleware

__all__ = ["MANAGER_KEY", "make_app", "serve"]

log = logging.getLogger(__name__)

MANAGER_KEY = web.AppKey("manager", Manager)
TOKEN_KEY = web.AppKey("token", str)
#: Largest request body: a .torrent of a huge folder (base64 in JSON) fits.
MAX_BODY = 32 << 20
_HEARTBEAT = 15.0
_STATUS = {BadRequest: 400, NotFound: 404, Conflict: 409, Upstream: 502}


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _error_response(exc: Exception) -> web.Response | None:
    for cls, status in _STATUS.items():
        if isinstance(exc, cls):
            return _json_error(status, str(exc))
    if isinstance(exc, SwarmhubError):
        return _json_error(400, str(exc))
    return None


@web.middleware
async def _auth(request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                ) -> web.StreamResponse:
    """Every route needs ``Authorization: Bearer <token>`` except the API description."""
    if request.path == "/api/openapi.yaml":
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="swarmhub daemon"'}
    if scheme.lower() != "bearer" or not given:
        return _json_error(401, "a token is needed: Authorization: Bearer <token> (the token "
                           "is in the daemon's state folder, api.token)", **challenge)
    if not hmac.compare_digest(given.strip().encode(), request.app[TOKEN_KEY].encode()):
        return _json_error(401, "wrong token (see api.token in the daemon's state folder)",
                           **challenge)
    return await handler(request)


def _manager(request: web.Request) -> Manager:
    return request.app[MANAGER_KEY]


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _int(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{key} must be an integer >= 0 (bytes/s, 0 = unlimited)")
    return value


def _strings(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key} must be a list of strings")
    return value


# -- routes -------------------------------------------------------------------------------------

async def openapi(request: web.Request) -> web.Response:
    data = importlib.resources.files("swarmhub.daemon").joinpath("openapi.yaml").read_bytes()
    return web.Response(body=data, content_type="application/yaml")


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(_manager(request).stats())


async def put_limits(request: web.Request) -> web.Response:
    m = _manager(request)
    body = await _body(request)
    down, up = m.global_limits()
    m.set_global_limits(_int(body, "download_limit", down), _int(body, "upload_limit", up))
    down, up = m.global_limits()
    return web.json_response({"download_limit": down, "upload_limit": up})


async def list_torrents(request: web.Request) -> web.Response:
    return web.json_response({"torrents": _manager(request).views()})


async def add_torrent(request: web.Request) -> web.Response:
    """JSON (``source`` or base64 ``torrent``), multipart (a ``torrent`` file part and the
    same fields), or a raw ``application/x-bittorrent`` body with fields in the query."""
    m = _manager(request)
    fields: dict[str, Any] = {}
    torrent: bytes | None = None
    filename = ""
    ctype = request.content_type
    if ctype == "application/json":
        fields = await _body(request)
        if fields.get("torrent") is not None:
            if not isinstance(fields["torrent"], str):
                raise BadRequest("'torrent' must be the .torrent file in base64")
            torrent = decode_torrent_field(fields["torrent"])
        filename = str(fields.get("filename") or "")
    elif ctype == "multipart/form-data":
        form = await request.post()
        for key in form:
            value = form.getall(key)
            if key == "torrent" and isinstance(value[0], web.FileField):
                torrent = value[0].file.read()
                filename = value[0].filename or ""
            else:
                texts = [str(v) for v in value]
                fields[key] = texts if key in ("peers", "trackers") else texts[0]
    elif ctype == "application/x-bittorrent":
        torrent = await request.read()
        for key in request.query:
            fields[key] = request.query.getall(key) if key in ("peers", "trackers") \
                else request.query[key]
    else:
        raise BadRequest("send JSON, multipart/form-data or application/x-bittorrent")
    paused = fields.get("paused", False)
    if isinstance(paused, str):
        paused = paused.lower() in ("1", "true", "yes")
    source = fields.get("source")
    save_path = fields.get("save_path")
    hub_token = fields.get("hub_token")
    for key, text in (("source", source), ("save_path", save_path), ("hub_token", hub_token)):
        if text is not None and not isinstance(text, str):
            raise BadRequest(f"{key} must be a string")
    if torrent is None and source is None:
        raise BadRequest("give 'source' (a magnet link or hub file URL) or a 'torrent' file")
    entry = await m.add(torrent=torrent, source=source, save_path=save_path,
                        paused=bool(paused), peers=_strings(fields.get("peers"), "peers"),
                        trackers=_strings(fields.get("trackers"), "trackers"),
                        hub_token=hub_token, filename=filename)
    return web.json_response(m.view(entry), status=201)


async def get_torrent(request: web.Request) -> web.Response:
    m = _manager(request)
    return web.json_response(m.view(m.get(request.match_info["id"])))


async def delete_torrent(request: web.Request) -> web.Response:
    m = _manager(request)
    flag = request.query.get("delete_data", "false").lower()
    if flag not in ("true", "false", "1", "0"):
        raise BadRequest("delete_data is true or false")
    tid = m.get(request.match_info["id"]).record.id
    await m.remove(tid, delete_data=flag in ("true", "1"))
    return web.json_response({"removed": tid, "deleted_data": flag in ("true", "1")})


async def pause(request: web.Request) -> web.Response:
    m = _manager(request)
    return web.json_response(m.view(await m.pause(request.match_info["id"])))


async def resume(request: web.Request) -> web.Response:
    m = _manager(request)
    return web.json_response(m.view(await m.resume(request.match_info["id"])))


async def put_torrent_limits(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = m.get(request.match_info["id"])
    body = await _body(request)
    entry = await m.set_limits(entry.record.id,
                               _int(body, "download_limit", entry.record.download_limit),
                               _int(body, "upload_limit", entry.record.upload_limit))
    return web.json_response(m.view(entry))


async def get_files(request: web.Request) -> web.Response:
    return web.json_response({"files": _manager(request).files(request.match_info["id"])})


async def put_files(request: web.Request) -> web.Response:
    m = _manager(request)
    body = await _body(request)
    prios = body.get("priorities")
    if not isinstance(prios, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in prios):
        raise BadRequest("priorities must be a list of integers, one per file")
    await m.set_priorities(request.match_info["id"], prios)
    return web.json_response({"files": m.files(request.match_info["id"])})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events until the client goes away; a comment line every 15 s keeps
    proxies from closing an idle stream."""
    m = _manager(request)
    sub = m.events.subscribe()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    try:
        await resp.prepare(request)
        await resp.write(b": swarmhub daemon events\n\n")
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), _HEARTBEAT)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if event is None:
                break  # shutting down: end the stream rather than wait to be cancelled
            await resp.write(event.sse())
    except ConnectionError:
        pass  # the client went away
    finally:
        m.events.unsubscribe(sub)
    return resp


def make_app(manager: Manager, token: str) -> web.Application:
    app = web.Application(middlewares=[json_errors_middleware(_error_response, "daemon"), _auth],
                          client_max_size=MAX_BODY)
    app[MANAGER_KEY] = manager
    app[TOKEN_KEY] = token

    async def end_streams(_: web.Application) -> None:
        manager.events.close()

    app.on_shutdown.append(end_streams)
    r = app.router
    r.add_get("/api/openapi.yaml", openapi)
    r.add_get("/api/session", get_session)
    r.add_put("/api/limits", put_limits)
    r.add_get("/api/torrents", list_torrents)
    r.add_post("/api/torrents", add_torrent)
    r.add_get("/api/torrents/{id}", get_torrent)
    r.add_delete("/api/torrents/{id}", delete_torrent)
    r.add_post("/api/torrents/{id}/pause", pause)
    r.add_post("/api/torrents/{id}/resume", resume)
    r.add_put("/api/torrents/{id}/limits", put_torrent_limits)
    r.add_get("/api/torrents/{id}/files", get_files)
    r.add_put("/api/torrents/{id}/files", put_files)
    r.add_get("/api/events", events)
    return app


async def serve(manager: Manager, token: str, host: str, port: int,
                on_ready: Callable[[int], None]) -> None:
    """Run the API until cancelled; ``on_ready(port)`` once it listens."""
    runner = web.AppRunner(make_app(manager, token), access_log=None, shutdown_timeout=2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        actual = int(sockets[0].getsockname()[1]) if sockets else port
        on_ready(actual)
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
