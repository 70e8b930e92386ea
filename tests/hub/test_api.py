"""The JSON API on a live hub (loopback): publishing, accounts, errors, OpenAPI conformance."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from conftest import free_port, until
from swarmhub.hub.api import HUB_KEY, Hub, HubConfig
from swarmhub.hub.app import HubRunner, admin_token_for_first_start, start_hub
from swarmhub.hub.backends import open_catalog

SPEC: dict[str, Any] = yaml.safe_load(
    resources.files("swarmhub.hub").joinpath("openapi.yaml").read_text()
)
_REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:openapi", DRAFT202012.create_resource(SPEC)
)


def check_schema(path: str, method: str, status: int, body: Any) -> None:
    """Validate a response body against the OpenAPI response schema for it."""
    op = SPEC["paths"][path][method]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    schema = resp["content"]["application/json"]["schema"]
    ref = schema.get("$ref")
    assert ref is not None, f"{method} {path} {status}: schema must be a $ref"
    validator = Draft202012Validator({"$ref": "urn:openapi" + ref}, registry=_REGISTRY)
    errors = sorted(validator.iter_errors(body), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0]}"


@dataclass
class Live:
    url: str
    admin: str
    hub: Hub
    app: web.Application
    data_dir: Path
    http: aiohttp.ClientSession

    def auth(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def token(self, role: str, label: str = "") -> tuple[str, dict[str, Any]]:
        async with self.http.post(
            f"{self.url}/api/tokens",
            json={"role": role, "label": label},
            headers=self.auth(self.admin),
        ) as r:
            body = await r.json()
            assert r.status == 201, body
            check_schema("/api/tokens", "post", 201, body)
            return body["token"], body

    async def publish(
        self,
        data: bytes | Any,
        name: str,
        token: str | None,
        collection: str | None = None,
        name_field: str | None = None,
    ) -> tuple[int, Any]:
        form = aiohttp.FormData()
        if collection is not None:
            form.add_field("collection", collection)
        if name_field is not None:
            form.add_field("name", name_field)
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        async with self.http.post(
            f"{self.url}/api/files", data=form, headers=self.auth(token)
        ) as r:
            return r.status, await r.json()

    def stored(self) -> tuple[list[Path], list[Path]]:
        blobs = [p for p in (self.data_dir / "blobs").rglob("*") if p.is_file()]
        tmp = [p for p in (self.data_dir / "tmp").rglob("*") if p.is_file()]
        return blobs, tmp


async def live_hub(tmp_path: Path, **config: Any) -> AsyncIterator[Live]:
    port = free_port()
    cfg = HubConfig(
        data_dir=tmp_path / "hub",
        public_url=f"http://127.0.0.1:{port}",
        peer_listen=config.pop("peer_listen", None),
        **config,
    )
    admin = admin_token_for_first_start(cfg)
    if admin is None:  # a restart: the first token's secret is gone, make another
        cat = open_catalog(cfg.db, cfg.data_dir)
        admin, _ = cat.add_token("admin", "test")
        cat.close()
    runner: HubRunner = await start_hub(cfg, "127.0.0.1", port)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            yield Live(cfg.public_url, admin, runner.app[HUB_KEY], runner.app, cfg.data_dir, http)
    finally:
        await runner.cleanup()


@pytest.fixture
async def live(tmp_path: Path, hub_backend: dict[str, str]) -> AsyncIterator[Live]:
    async for x in live_hub(tmp_path, max_upload_size=1 << 20, **hub_backend):
        yield x


async def test_publish_list_get_and_dedup(live: Live) -> None:
    pub, _ = await live.token("publisher")
    data = os.urandom(100_000)
    status, body = await live.publish(data, "report.pdf", pub)
    assert status == 201, body
    check_schema("/api/files", "post", 201, body)
    assert body["name"] == "report.pdf" and body["size"] == len(data)
    assert body["url"] == f"{live.url}/f/{body['id']}/report.pdf"
    # Identical bytes and name: the same entry again, one blob on disk.
    status, again = await live.publish(data, "report.pdf", pub)
    assert status == 200 and again["id"] == body["id"]
    # Same bytes, another name: a new entry sharing the blob.
    status, other = await live.publish(data, "copy.pdf", pub)
    assert status == 201 and other["sha256"] == body["sha256"]
    blobs, tmp = live.stored()
    assert len(blobs) == 1 and tmp == []
    async with live.http.get(f"{live.url}/api/files?q=REPORT") as r:
        listing = await r.json()
    check_schema("/api/files", "get", 200, listing)
    assert [f["id"] for f in listing["files"]] == [body["id"]] and listing["total"] == 1
    async with live.http.get(f"{live.url}/api/files?limit=1") as r:
        page = await r.json()
    assert len(page["files"]) == 1 and page["total"] == 2
    async with live.http.get(f"{live.url}/api/files/{body['id']}") as r:
        one = await r.json()
    check_schema("/api/files/{id}", "get", 200, one)
    assert one["magnet"].startswith("magnet:?xt=urn:btih:" + body["info_hash_v1"])
    async with live.http.get(f"{live.url}/api/files?limit=x") as r:
        assert r.status == 400
        check_schema("/api/files", "get", 400, await r.json())


async def test_tokens_roles_and_revocation(live: Live) -> None:
    status, body = await live.publish(b"data", "a.txt", None)
    assert status == 401 and "token" in body["error"]
    check_schema("/api/files", "post", 401, body)
    reader, _ = await live.token("reader")
    status, body = await live.publish(b"data", "a.txt", reader)
    assert status == 403 and "publisher" in body["error"]
    check_schema("/api/files", "post", 403, body)
    pub, pub_info = await live.token("publisher", "ci")
    status, _ = await live.publish(b"data", "a.txt", pub)
    assert status == 201
    async with live.http.post(
        f"{live.url}/api/tokens/{pub_info['id']}/revoke", headers=live.auth(live.admin)
    ) as r:
        revoked = await r.json()
    check_schema("/api/tokens/{id}/revoke", "post", 200, revoked)
    assert revoked["revoked_at"] is not None
    status, body = await live.publish(b"other", "b.txt", pub)  # refused at once
    assert status == 403 and "revoked" in body["error"]
    async with live.http.get(f"{live.url}/api/tokens", headers=live.auth(pub)) as r:
        assert r.status == 403
    async with live.http.get(f"{live.url}/api/tokens", headers=live.auth(reader)) as r:
        assert r.status == 403
    async with live.http.get(f"{live.url}/api/tokens", headers=live.auth(live.admin)) as r:
        tokens = await r.json()
    check_schema("/api/tokens", "get", 200, tokens)
    assert {t["role"] for t in tokens["tokens"]} == {"admin", "reader", "publisher"}
    assert all("token" not in t for t in tokens["tokens"])
    async with live.http.get(f"{live.url}/api/me", headers=live.auth(reader)) as r:
        me = await r.json()
    check_schema("/api/me", "get", 200, me)
    assert me["role"] == "reader"
    async with live.http.post(
        f"{live.url}/api/tokens", json={"role": "root"}, headers=live.auth(live.admin)
    ) as r:
        assert r.status == 400
        check_schema("/api/tokens", "post", 400, await r.json())


@pytest.mark.parametrize("name", ["../x", "a/b", "x\x00y", "CON", "..", ""])
async def test_unsafe_names_are_refused(live: Live, name: str) -> None:
    pub, _ = await live.token("publisher")
    if "\x00" not in name:  # aiohttp refuses control bytes in a filename header itself
        status, body = await live.publish(b"payload", name, pub)
        assert status == 400, body
        check_schema("/api/files", "post", 400, body)
    status, body = await live.publish(b"payload", "ok.bin", pub, name_field=name)
    assert status == 400, body
    assert "unsafe" in body["error"] or "empty" in body["error"]
    async with live.http.get(f"{live.url}/api/files") as r:
        assert (await r.json())["total"] == 0
    assert live.stored() == ([], [])


async def test_oversize_upload_is_413_and_stores_nothing(live: Live) -> None:
    pub, _ = await live.token("publisher")
    status, body = await live.publish(os.urandom(2 << 20), "big.bin", pub)  # Content-Length
    assert status == 413 and "limit" in body["error"]
    check_schema("/api/files", "post", 413, body)

    async def stream() -> AsyncIterator[bytes]:  # chunked: only the stream tells the size
        for _ in range(40):
            yield b"z" * 65536

    status, body = await live.publish(stream(), "big2.bin", pub)
    assert status == 413, body
    async with live.http.get(f"{live.url}/api/files") as r:
        assert (await r.json())["total"] == 0
    assert live.stored() == ([], [])


async def test_truncated_upload_leaves_no_entry_blob_or_temp(live: Live) -> None:
    pub, _ = await live.token("publisher")
    boundary = "XyZbOuNdArY"
    payload = os.urandom(600_000)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    port = int(live.url.rsplit(":", 1)[1])
    head = (
        f"POST /api/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {pub}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 10)
    try:
        await asyncio.to_thread(sock.sendall, head + body[: len(body) // 2])
        # the hub receives it into a temp file
        await until(lambda: bool(live.stored()[1]), "the hub streaming the upload to disk")
    finally:
        sock.close()  # cut off half-way
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if live.stored() == ([], []):
            break
        await asyncio.sleep(0.05)
    assert live.stored() == ([], [])
    async with live.http.get(f"{live.url}/api/files") as r:
        assert (await r.json())["total"] == 0
    # The hub is fine afterwards.
    status, _ = await live.publish(payload, "t.bin", pub)
    assert status == 201


async def test_collections_and_private_visibility(live: Live) -> None:
    admin = live.auth(live.admin)
    pub, _ = await live.token("publisher")
    async with live.http.post(
        f"{live.url}/api/collections", json={"name": "team", "private": True}, headers=admin
    ) as r:
        created = await r.json()
    assert r.status == 201
    check_schema("/api/collections", "post", 201, created)
    async with live.http.post(
        f"{live.url}/api/collections", json={"name": "team"}, headers=admin
    ) as r:
        assert r.status == 409
        check_schema("/api/collections", "post", 409, await r.json())
    async with live.http.post(
        f"{live.url}/api/collections", json={"name": "x"}, headers=live.auth(pub)
    ) as r:
        assert r.status == 403
    status, body = await live.publish(b"secret bytes", "s.txt", pub, collection="nope")
    assert status == 404 and "collection" in body["error"]
    status, body = await live.publish(b"secret bytes", "s.txt", pub, collection="team")
    assert status == 201 and body["private"] is True
    async with live.http.get(f"{live.url}/api/files") as r:
        assert (await r.json())["total"] == 0  # strangers do not see private files
    async with live.http.get(f"{live.url}/api/files/{body['id']}") as r:
        assert r.status == 404
    async with live.http.get(f"{live.url}/api/files", headers=live.auth(pub)) as r:
        assert (await r.json())["total"] == 1
    async with live.http.get(f"{live.url}/api/collections") as r:
        assert (await r.json())["collections"] == []  # nor private collections
    async with live.http.get(f"{live.url}/api/collections", headers=live.auth(pub)) as r:
        listing = await r.json()
    check_schema("/api/collections", "get", 200, listing)
    assert listing["collections"][0]["files"] == 1
    async with live.http.delete(f"{live.url}/api/collections/team", headers=admin) as r:
        assert r.status == 409


async def test_delete_permissions_and_blob_gc(live: Live) -> None:
    alice, _ = await live.token("publisher")
    bob, _ = await live.token("publisher")
    data = os.urandom(50_000)
    _, a = await live.publish(data, "a.bin", alice)
    _, b = await live.publish(data, "b.bin", alice)
    async with live.http.delete(f"{live.url}/api/files/{a['id']}", headers=live.auth(bob)) as r:
        assert r.status == 403
        check_schema("/api/files/{id}", "delete", 403, await r.json())
    async with live.http.delete(f"{live.url}/api/files/{a['id']}", headers=live.auth(alice)) as r:
        body = await r.json()
    check_schema("/api/files/{id}", "delete", 200, body)
    assert len(live.stored()[0]) == 1  # b still uses the blob
    assert not (live.data_dir / "seed" / a["id"]).exists()
    async with live.http.delete(
        f"{live.url}/api/files/{b['id']}", headers=live.auth(live.admin)
    ) as r:
        assert r.status == 200
    assert live.stored() == ([], [])
    async with live.http.delete(
        f"{live.url}/api/files/{b['id']}", headers=live.auth(live.admin)
    ) as r:
        assert r.status == 404
        check_schema("/api/files/{id}", "delete", 404, await r.json())
    async with live.http.get(f"{live.url}/api/stats", headers=live.auth(live.admin)) as r:
        stats = await r.json()
    check_schema("/api/stats", "get", 200, stats)
    assert stats["files"] == 0


async def test_errors_are_json(live: Live) -> None:
    async with live.http.get(f"{live.url}/no/such/route") as r:
        assert r.status == 404 and "error" in await r.json()
    async with live.http.put(f"{live.url}/api/files") as r:
        assert r.status == 405 and "error" in await r.json()
    async with live.http.get(f"{live.url}/api/files", headers={"X-Big": "a" * 20000}) as r:
        assert r.status == 431
        assert r.content_type == "application/json"
        assert "too large" in (await r.json())["error"]
    async with live.http.post(
        f"{live.url}/api/collections",
        data=b"{not json",
        headers={**live.auth(live.admin), "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400 and "JSON" in (await r.json())["error"]


async def test_openapi_is_served_and_lists_every_api_route(live: Live) -> None:
    async with live.http.get(f"{live.url}/api/openapi.yaml") as r:
        assert r.status == 200
        spec = yaml.safe_load(await r.text())
    assert spec["openapi"].startswith("3.1")
    routes = {
        (res.canonical, route.method.lower())
        for res in live.app.router.resources()
        for route in res
        if res.canonical.startswith("/api/") and route.method != "HEAD"
    }
    assert ("/api/files", "post") in routes
    for path, method in routes:
        if path != "/api/openapi.yaml":
            assert method in spec["paths"][path], (path, method)
    assert json.dumps(spec)  # plain data
