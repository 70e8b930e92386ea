"""The daemon adds a hub file by its URL: the hub's torrent (tracker + web seed) is fetched,
the download finishes; a hub that is down is a 502 with a JSON error."""

from __future__ import annotations

from pathlib import Path

from daemonproc import check_schema, start_daemon, wait_for

from cli_helpers import published_file
from conftest import free_port


def test_add_a_hub_url_and_download_it(tmp_path: Path) -> None:
    size = 700_000
    with published_file(tmp_path / "hub", size, seed=77) as (_hub, url):
        d = start_daemon(tmp_path / "state", tmp_path, "d", "--download-dir",
                         str(tmp_path / "dl"))
        try:
            code, t = d.api("POST", "/api/torrents", {"source": url})
            assert code == 201, t
            check_schema("/api/torrents", "post", 201, t)
            assert t["kind"] == "hub" and t["source"] == url and t["size"] == size
            wait_for(lambda: d.torrents()[t["id"]]["complete"], 60, "the hub file")
            got = tmp_path / "dl" / t["name"]
            assert got.read_bytes() == (tmp_path / "hub" / "src" / t["name"]).read_bytes()
            down = f"http://127.0.0.1:{free_port()}/f/abc"
            code, body = d.api("POST", "/api/torrents", {"source": down})
            assert code == 502, body
            check_schema("/api/torrents", "post", 502, body)
            assert "127.0.0.1" in body["error"]
        finally:
            d.proc.stop()
