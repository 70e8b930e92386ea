"""The admin page in headless Chromium (Debian's ``chromium``) against a live hub.

Playwright drives the system browser (``executable_path``; ``playwright install`` is never
needed). One journey covers what the page is for: refusing a bad token, signing in,
publishing a file through the file input, watching a libtorrent peer download it from the
hub's embedded seeder (peer count and swarm bytes in the page), HTTP bytes per file,
collections, search, escaping, and creating then revoking a token that the API then refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from test_api import Live, check_schema, live_hub

from conftest import need, need_tool
from swarmhub.bencode import bdecode, bencode

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: A name with markup in it: it must show up as text, never as an element.
FILE_NAME = "notes <img src=x onerror=alert(1)> & co.bin"
UI_TIMEOUT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    exe = need_tool("chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        need(False, "the Python package playwright is not installed (pip install -e .[dev])")
        raise
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            await asyncio.wait_for(b.close(), 30)


async def _wait_row(
    page: Any,
    file_id: str,
    what: str,
    ok: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """Poll the file's row (bounded) until its numbers satisfy ``ok``; return them."""
    deadline = time.monotonic() + timeout
    nums: dict[str, Any] = {}
    while time.monotonic() < deadline:
        nums = await _row_numbers(page, file_id)
        if ok(nums):
            return nums
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; the page shows {nums}")


async def _row_numbers(page: Any, file_id: str) -> dict[str, Any]:
    """The live cells of a file's row, as the page shows them."""
    result: dict[str, Any] = await page.eval_on_selector(
        f'tr[data-file-id="{file_id}"]',
        """row => {
          const cell = (c) => row.querySelector(`[data-col="${c}"]`);
          return {
            seeders: Number(cell("seeders").textContent),
            leechers: Number(cell("leechers").textContent),
            http_bytes: Number(cell("http_bytes").title.split(" ")[0]),
            seeder_uploaded: Number(cell("seeder_uploaded").title.split(" ")[0]),
            swarm_text: cell("seeder_uploaded").textContent,
          };
        }""",
    )
    return result


async def _message(page: Any, *words: str, timeout_ms: int = UI_TIMEOUT_MS) -> str:
    """The message bar's text once it is visible and contains one of ``words``."""
    await page.wait_for_function(
        """words => {
          const bar = document.getElementById("message");
          const text = document.getElementById("message-text").textContent;
          return !bar.hidden && words.some((w) => text.includes(w));
        }""",
        arg=list(words),
        timeout=timeout_ms,
    )
    text: str = await page.text_content("#message-text")
    return text


async def _get(live: Live, path: str, token: str | None) -> tuple[int, Any]:
    async with live.http.get(live.url + path, headers=live.auth(token)) as r:
        return r.status, await r.json()


@pytest.mark.interop
async def test_admin_page_end_to_end(tmp_path: Path, browser: Any) -> None:
    try:
        import libtorrent  # noqa: F401  (the peer runs in its own process)
    except ImportError:
        need(False, "libtorrent is not installed")
    from interop.harness import LtPeer

    data = os.urandom(3 * 1024 * 1024 + 4321)
    upload = tmp_path / "upload" / FILE_NAME
    upload.parent.mkdir()
    upload.write_bytes(data)
    errors: list[str] = []
    async for live in live_hub(
        tmp_path, peer_listen=("127.0.0.1", 0), tracker_interval=5, max_upload_size=64 << 20
    ):
        context = await browser.new_context(viewport={"width": 1500, "height": 1000})
        page = await context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        page.on("dialog", lambda dialog: dialog.accept())  # confirm() before deletes/revokes
        peer: Any = None
        try:
            # /admin redirects to /admin/; a wrong token is refused with the API's reason.
            await page.goto(live.url + "/admin")
            assert page.url == live.url + "/admin/"
            await page.fill("#token-input", "not-a-token")
            await page.click("#signin button[type=submit]")
            assert "invalid or revoked token" in await _message(page, "Sign-in failed")
            assert await page.is_hidden("#app")
            errors.clear()  # the browser logs the refused request itself (403)

            await page.fill("#token-input", live.admin)
            await page.click("#signin button[type=submit]")
            await page.wait_for_selector("#app", state="visible")
            assert await page.text_content("#me-role") == "admin"
            assert await page.evaluate("sessionStorage.getItem('swarmhub.token')") == live.admin

            # Collections: an invalid name shows the API's error, a good one is listed.
            await page.fill("#collection-name", "bad name!")
            await page.click("#collection-form button[type=submit]")
            assert "invalid collection name" in await _message(page, "failed")
            errors.clear()
            await page.fill("#collection-name", "team")
            await page.check("#collection-private")
            await page.click("#collection-form button[type=submit]")
            await page.wait_for_selector('tr[data-collection="team"]')
            assert "private" in await page.text_content('tr[data-collection="team"]')
            await page.wait_for_selector(
                '#publish-collection option[value="team"]', state="attached"
            )

            # Publish through the file input; progress, then the row.
            await page.set_input_files("#publish-file", str(upload))
            await page.click("#publish-button")
            text = await _message(page, "Published", "failed", timeout_ms=60_000)
            assert "Published" in text and FILE_NAME in text, text
            row = page.locator("#files-body tr")
            await row.first.wait_for()
            assert await row.count() == 1
            file_id = await row.first.get_attribute("data-file-id")
            status, listing = await _get(live, "/api/files", live.admin)
            assert status == 200 and listing["total"] == 1
            f = listing["files"][0]
            assert f["id"] == file_id and f["name"] == FILE_NAME and f["size"] == len(data)
            assert f["collection"] is None and f["private"] is False
            _, me = await _get(live, "/api/me", live.admin)
            assert f["published_by"] == me["id"]
            # The name is text: the markup in it made no element.
            assert await page.text_content(f'tr[data-file-id="{file_id}"] .fname') == FILE_NAME
            assert await page.locator(f'tr[data-file-id="{file_id}"] img').count() == 0
            assert f["info_hash_v1"][:8] in await page.text_content(
                f'tr[data-file-id="{file_id}"] td.hashes'
            )
            hrefs = await page.eval_on_selector_all(
                f'tr[data-file-id="{file_id}"] td.links a', "as => as.map(a => a.href)"
            )
            assert hrefs[:3] == [f["url"], f["torrent_url"], f["torrent_v1_url"]]

            # Search filters the list; clearing it brings the file back.
            await page.fill("#search", "no-such-file")
            await page.wait_for_selector(f'tr[data-file-id="{file_id}"]', state="detached")
            await page.fill("#search", "NOTES")
            await page.wait_for_selector(f'tr[data-file-id="{file_id}"]')

            # HTTP: the bytes a plain download takes show up for that file.
            async with live.http.get(f["url"]) as r:
                assert r.status == 200 and await r.read() == data
            size = len(data)
            await _wait_row(page, file_id, "HTTP bytes", lambda n, s=size: n["http_bytes"] == s)

            # Before any peer: the hub's own seeder, in the file's hybrid and v1 swarms,
            # counted once.
            before = await _wait_row(
                page, file_id, "the hub's seeder", lambda n: n["seeders"] >= 1, timeout=30
            )
            assert (before["seeders"], before["leechers"], before["seeder_uploaded"]) == (1, 0, 0)

            # BitTorrent: a libtorrent peer finds the hub's seeder through the hub's tracker
            # (web seed removed, so every byte comes from the swarm).
            async with live.http.get(f["torrent_url"]) as r:
                outer = bdecode(await r.read())
            del outer[b"url-list"]
            torrent = tmp_path / "swarm.torrent"
            torrent.write_bytes(bencode(outer))
            peer = LtPeer(torrent, tmp_path / "lt", timeout=120, log_dir=tmp_path / "logs")
            await asyncio.to_thread(peer.start)
            await asyncio.to_thread(peer.wait_finished, 90)
            assert (tmp_path / "lt" / FILE_NAME).read_bytes() == data

            # The hub's seeder (in the hybrid and the v1 swarm) counts once; the libtorrent
            # peer joins the hybrid one (announcing both of its info hashes, it counts once
            # too): 2. And the file's bytes went out through the swarm.
            nums = await _wait_row(
                page,
                file_id,
                "the libtorrent peer and the swarm bytes",
                lambda n, s=size: n["seeders"] + n["leechers"] >= 2 and n["seeder_uploaded"] >= s,
            )
            assert nums["http_bytes"] == len(data)
            status, live_numbers = await _get(live, "/api/live", live.admin)
            assert status == 200
            check_schema("/api/live", "get", 200, live_numbers)
            entry = next(x for x in live_numbers["files"] if x["id"] == file_id)
            assert entry["seeders"] + entry["leechers"] == 2
            assert entry["seeder_uploaded"] >= len(data) and entry["http_bytes"] == len(data)
            totals = live_numbers["totals"]
            assert totals["seeder_uploaded"] >= len(data)
            assert totals["http_bytes_served"] >= len(data)
            assert (await page.text_content("#t-seed-bytes")) != "–"

            # Tokens: create one (shown once), it works; revoke it in the page, it is refused.
            await page.select_option("#token-role", "reader")
            await page.fill("#token-label", "ci <reader>")
            await page.click("#token-form button[type=submit]")
            await page.wait_for_selector("#new-token", state="visible")
            secret = await page.input_value("#new-token-value")
            status, who = await _get(live, "/api/me", secret)
            assert status == 200 and who["role"] == "reader" and who["label"] == "ci <reader>"
            token_row = f'tr[data-token-id="{who["id"]}"]'
            await page.wait_for_selector(token_row)
            await page.click(f'{token_row} button[data-action="revoke"]')
            await page.wait_for_selector(f"{token_row}.revoked")
            status, body = await _get(live, "/api/me", secret)
            assert status == 403 and "revoked" in body["error"]
            status, _ = await _get(live, "/api/live", secret)
            assert status == 403

            # A private file: its HTTP link carries the admin's passkey (never the token)
            # and its .torrent is fetched with the token and saved by the page.
            secret_data = os.urandom(70_000)
            pub, _ = await live.token("publisher")
            status, pf = await live.publish(secret_data, "secret.bin", pub, collection="team")
            assert status == 201, pf
            private_row = f'tr[data-file-id="{pf["id"]}"]'
            await page.fill("#search", "")  # the search above still filters the list
            await page.wait_for_selector(private_row)
            assert await page.locator("#files-body tr").count() == 2
            assert "private" in await page.text_content(f"{private_row} td.name")
            links = f"{private_row} td.links a"
            http_href = await page.eval_on_selector_all(links, "as => as[0].href")
            assert http_href == f"{live.url}/k/{me['passkey']}/{pf['id']}/secret.bin"
            async with live.http.get(http_href) as r:
                assert r.status == 200 and await r.read() == secret_data
            async with page.expect_download() as download_info:
                await page.click(f"{links} >> nth=1")
            download = await download_info.value
            assert download.suggested_filename == "secret.bin.torrent"
            saved = bdecode(Path(await download.path()).read_bytes())
            assert saved[b"announce"] == f"{live.url}/announce?passkey={me['passkey']}".encode()

            await page.wait_for_timeout(2500)  # one more auto-refresh, then the picture
            # only a picture for people, not a check: a loaded 2-core CI took over 15 s to
            # render it (the page had passed every check above), so it gets the slow steps' time
            await page.screenshot(path=str(tmp_path / "admin-page.png"), full_page=True,
                                  timeout=60_000)
            assert not errors, errors
        finally:
            if peer is not None:
                await asyncio.to_thread(peer.stop)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(context.close(), 30)


# ------------------------------------------------------------------------------ no browser


async def test_live_counts_http_bytes_per_file_and_needs_a_token(tmp_path: Path) -> None:
    async for live in live_hub(tmp_path, max_upload_size=1 << 20):
        pub, _ = await live.token("publisher")
        a_data, b_data = os.urandom(100_000), os.urandom(50_000)
        status, a = await live.publish(a_data, "a.bin", pub)
        assert status == 201, a
        status, b = await live.publish(b_data, "b.bin", pub)
        assert status == 201, b
        async with live.http.get(live.url + "/api/live") as r:
            assert r.status == 401
            check_schema("/api/live", "get", 401, await r.json())
        async with live.http.get(a["url"]) as r:
            assert await r.read() == a_data
        for _ in range(2):
            async with live.http.get(b["url"], headers={"Range": "bytes=0-999"}) as r:
                assert r.status == 206 and await r.read() == b_data[:1000]
        async with live.http.head(a["url"]) as r:
            assert r.status == 200  # no body: counts nothing
        status, body = await _get(live, "/api/live", pub)
        assert status == 200
        check_schema("/api/live", "get", 200, body)
        by_id = {f["id"]: f for f in body["files"]}
        assert by_id[a["id"]]["http_bytes"] == 100_000
        assert by_id[b["id"]]["http_bytes"] == 2_000
        assert by_id[a["id"]]["seeder_uploaded"] == 0  # this hub runs without its seeder
        assert body["totals"]["http_bytes_served"] == 102_000
        assert body["totals"]["http_active_transfers"] == 0
        async with live.http.delete(f"{live.url}/api/files/{a['id']}", headers=live.auth(pub)) as r:
            assert r.status == 200
        status, body = await _get(live, "/api/live", pub)
        assert [f["id"] for f in body["files"]] == [b["id"]]
        assert body["totals"]["http_bytes_served"] == 102_000  # the hub's total stays


async def test_admin_page_and_assets_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    async for live in live_hub(tmp_path):
        async with live.http.get(live.url + "/admin", allow_redirects=False) as r:
            assert r.status == 308 and r.headers["Location"] == "admin/"
        async with live.http.get(live.url + "/admin/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
            csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert 'src="admin.js"' in html and 'href="admin.css"' in html
        assert "<script>" not in html and "style=" not in html  # nothing inline: the CSP holds
        for name, ctype in (("admin.js", "javascript"), ("admin.css", "text/css")):
            async with live.http.get(f"{live.url}/admin/{name}") as r:
                assert r.status == 200 and ctype in r.content_type
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert len(await r.read()) > 1000
        script = await (await live.http.get(f"{live.url}/admin/admin.js")).text()
        assert "innerHTML" not in script.replace("never innerHTML", "")
        for bad in ("nope.js", ".hidden", "%2e%2e%2fopenapi.yaml"):
            async with live.http.get(f"{live.url}/admin/{bad}") as r:
                assert r.status == 404 and "error" in await r.json()
