"""Issue 11, finding 1, as reported: a real ``swarmhub hub`` process and our CLI.

A reader fetches a private .torrent, is revoked, then ``swarmhub get THAT.torrent --peer
<hub seeder>`` must get nothing; a reader whose token is live still downloads from the
seeder through the tracker. The torrents lose their web seed (outside the info dict), so
the embedded seeder is the only source. The hub runs with ``-vv``: its debug log says
when the seeder turns a peer away, which is what the test waits for.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from interop.harness import Proc, make_test_data
from interop.test_hub_modes import SWARMHUB, Hub, start_hub
from swarmhub.bencode import bdecode, bencode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]


def call(hub: Hub, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    req = urllib.request.Request(
        hub.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token or hub.token}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def private_torrent(hub: Hub, file_id: str, token: str, dest: Path) -> Path:
    req = urllib.request.Request(f"{hub.url}/t/{file_id}.torrent",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        outer = bdecode(r.read())
    outer.pop(b"url-list", None)  # the seeder alone
    dest.write_bytes(bencode(outer))
    return dest


def metric(hub: Hub, name: str) -> float:
    with urllib.request.urlopen(f"{hub.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, text
    return float(m.group(1))


def test_revoked_reader_cannot_download_from_the_hub_seeder(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, "-v", "-v", "--tracker-interval", "10")
    try:
        call(hub, "POST", "/api/collections", {"name": "team", "private": True})
        data = make_test_data(tmp_path / "src", [3_000_000], seed=31)
        with Proc([*SWARMHUB, "publish", str(data), "--hub", hub.url, "--token", hub.token,
                   "--collection", "team"], name="publish", log=tmp_path / "pub.log") as p:
            assert p.wait(60) == 0, p.describe()
        (f,) = call(hub, "GET", "/api/files")["files"]
        mallory = call(hub, "POST", "/api/tokens", {"role": "reader", "label": "mallory"})
        carol = call(hub, "POST", "/api/tokens", {"role": "reader", "label": "carol"})
        kept = private_torrent(hub, f["id"], mallory["token"], tmp_path / "kept.torrent")
        call(hub, "POST", f"/api/tokens/{mallory['id']}/revoke")

        peer = f"127.0.0.1:{hub.peer_port}"
        with Proc([*SWARMHUB, "get", str(kept), "--peer", peer, "-o", str(tmp_path / "m"),
                   "--json", "--listen", "127.0.0.1:0", "--timeout", "60"],
                  name="get-mallory", log=tmp_path / "mallory.log") as g:
            hub.proc.wait_for_line(
                lambda s: "closing" in s and "announce to the hub's tracker" in s, 60)
            assert g.poll() is None, g.describe()  # it got nothing, it is still trying
        assert metric(hub, "swarmhub_seeder_uploaded_bytes_total") == 0
        assert not (tmp_path / "m" / data.name).exists() or \
            (tmp_path / "m" / data.name).read_bytes() != data.read_bytes()

        good = private_torrent(hub, f["id"], carol["token"], tmp_path / "good.torrent")
        with Proc([*SWARMHUB, "get", str(good), "-o", str(tmp_path / "c"), "--json",
                   "--listen", "127.0.0.1:0", "--timeout", "120"],
                  name="get-carol", log=tmp_path / "carol.log") as g:
            assert g.wait(150) == 0, g.describe()
        assert (tmp_path / "c" / data.name).read_bytes() == data.read_bytes()
        assert metric(hub, "swarmhub_seeder_uploaded_bytes_total") >= data.stat().st_size
    finally:
        hub.proc.stop()
