"""Operator traps, with real ``swarmhub`` processes: a failed start creates no token, a lost
token can be replaced offline, ``swarmhub admin`` does what the admin page does, ``/`` leads
to the admin page, and the hub's data folder is private."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubproc import HubProc, api, catalog_rows, cli, loose_modes, start_hub

from conftest import free_port
from interop.harness import Proc
from swarmhub.hub.api import DEFAULT_PEER_PORT, HubConfig

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProc]:
    h = start_hub(tmp_path / "data", tmp_path, "hub")
    try:
        yield h
    finally:
        h.proc.stop()


def test_default_seeder_port_is_not_the_readme_peer_port() -> None:
    assert DEFAULT_PEER_PORT != 6881
    assert HubConfig(data_dir=Path("x")).peer_listen == ("127.0.0.1", DEFAULT_PEER_PORT)
    from swarmhub.hub.commands import hub as hub_command

    assert f":{DEFAULT_PEER_PORT}" in str(hub_command.__defaults__)


@pytest.mark.parametrize("busy", ["peer", "http"])
def test_busy_port_is_one_line_error_and_creates_no_token(tmp_path: Path, busy: str) -> None:
    data = tmp_path / "data"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        http, peer = (free_port(), taken) if busy == "peer" else (taken, free_port())
        proc = cli(tmp_path, "hub", "hub", "--data", str(data), "--listen", f"127.0.0.1:{http}",
                   "--peer-listen", f"127.0.0.1:{peer}")
    out = proc.output()
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 1, out
    assert len(lines) == 1 and "Traceback" not in out, out
    option = "--peer-listen" if busy == "peer" else "--listen"
    assert f"127.0.0.1:{taken}" in lines[0] and option in lines[0], out
    assert "address already in use" in lines[0], out
    assert catalog_rows(data, "SELECT COUNT(*) FROM tokens") == [(0,)]
    # The next start that binds shows the first admin token, and it works.
    h = start_hub(data, tmp_path, "hub-again")
    try:
        assert h.token is not None
        assert api(h, "/api/me", h.token)[1]["role"] == "admin"
    finally:
        h.proc.stop()


def test_second_hub_on_the_same_data_folder_refuses_to_start(
    hub: HubProc, tmp_path: Path
) -> None:
    second = cli(tmp_path, "hub2", "hub", "--data", str(hub.data), "--listen",
                 f"127.0.0.1:{free_port()}", "--peer-listen", f"127.0.0.1:{free_port()}")
    lines = [line for line in second.output().splitlines() if line.strip()]
    assert second.returncode == 1 and len(lines) == 1, second.output()
    assert f"another hub (pid {hub.proc.pid}) is using {hub.data}" in lines[0]
    assert api(hub, "/api/me", hub.token)[0] == 200  # the first one is untouched


def test_folder_that_is_not_a_hubs_is_refused_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "home"
    (folder / "tmp").mkdir(parents=True)
    (folder / "tmp" / "draft.txt").write_text("mine")
    (folder / "notes.txt").write_text("mine")
    folder.chmod(0o755)
    proc = cli(tmp_path, "hub", "hub", "--data", str(folder), "--listen",
               f"127.0.0.1:{free_port()}", "--peer-listen", "off")
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.output()
    assert "holds no hub catalog" in lines[0] and "--data" in lines[0]
    assert sorted(p.name for p in folder.rglob("*")) == ["draft.txt", "notes.txt", "tmp"]
    assert folder.stat().st_mode & 0o777 == 0o755


def test_hub_token_new_works_offline_and_online(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_hub(data, tmp_path, "hub1")
    first.proc.stop()
    made = cli(tmp_path, "token-offline", "hub", "token", "--new", "--data", str(data))
    assert made.returncode == 0, made.describe()
    m = re.search(r"admin token: (\S+)", made.output())
    assert m is not None, made.output()
    offline_token = m.group(1)
    h = start_hub(data, tmp_path, "hub2", first=False)
    try:
        assert h.token is None  # not a first start: nothing printed
        for token in (first.token, offline_token):
            status, me = api(h, "/api/me", token)
            assert status == 200 and me["role"] == "admin", me
        # With the hub running, a new token works for the very next request.
        online = cli(tmp_path, "token-online", "hub", "token", "--new", "--data", str(data))
        m = re.search(r"admin token: (\S+)", online.output())
        assert online.returncode == 0 and m is not None, online.describe()
        assert api(h, "/api/tokens", m.group(1))[0] == 200
        assert loose_modes(data) == []
    finally:
        h.proc.stop()
    bare = cli(tmp_path, "token-bare", "hub", "token", "--data", str(data))
    assert bare.returncode == 2 and "--new" in bare.output()
    nowhere = cli(tmp_path, "token-nowhere", "hub", "token", "--new", "--data",
                  str(tmp_path / "typo"))
    assert nowhere.returncode == 1 and "no hub catalog" in nowhere.output()
    assert not (tmp_path / "typo").exists()


def _admin(tmp_path: Path, hub: HubProc, name: str, *args: str, token: str | None = None) -> Proc:
    auth = token or hub.token or ""
    return cli(tmp_path, name, "admin", *args, "--hub", hub.url, "--token", auth)


def test_admin_cli_lists_creates_and_revokes(hub: HubProc, tmp_path: Path) -> None:
    made = _admin(tmp_path, hub, "c-create", "collections", "create", "pics", "--private")
    assert made.returncode == 0 and "created private collection pics" in made.output()
    listed = _admin(tmp_path, hub, "c-list", "collections", "list")
    assert listed.returncode == 0 and "pics\tprivate\t0 file(s)" in listed.output()

    made = _admin(tmp_path, hub, "t-create", "tokens", "create", "--role", "reader",
                  "--label", "bob")
    secret = re.search(r"token: (\S+)", made.output())
    token_id = re.search(r"id:\s+(\S+) \(reader\)", made.output())
    assert made.returncode == 0 and secret and token_id, made.output()
    assert api(hub, "/api/me", secret.group(1))[1]["label"] == "bob"
    listed = _admin(tmp_path, hub, "t-list", "tokens", "list")
    assert f"{token_id.group(1)}\treader\tactive\tbob" in listed.output()

    revoked = _admin(tmp_path, hub, "t-revoke", "tokens", "revoke", token_id.group(1))
    assert revoked.returncode == 0 and f"revoked {token_id.group(1)}" in revoked.output()
    assert api(hub, "/api/me", secret.group(1))[0] == 403
    listed = _admin(tmp_path, hub, "t-list2", "tokens", "list", "--json")
    rows = {t["id"]: t for t in json.loads(listed.output())["tokens"]}
    assert rows[token_id.group(1)]["revoked_at"] is not None

    gone = _admin(tmp_path, hub, "c-delete", "collections", "delete", "pics")
    assert gone.returncode == 0
    assert "(no collections)" in _admin(tmp_path, hub, "c-list2", "collections", "list").output()
    stats = _admin(tmp_path, hub, "stats", "stats")
    assert stats.returncode == 0 and "collections: 0" in stats.output()

    payload = tmp_path / "notes.txt"
    payload.write_bytes(b"notes " * 1000)
    pub = cli(tmp_path, "publish", "publish", str(payload), "--hub", hub.url,
              "--token", hub.token or "")
    assert pub.returncode == 0, pub.describe()
    listed = _admin(tmp_path, hub, "f-list", "files", "list")
    row = re.search(r"^(\S+)\t6000\t-\tnotes.txt$", listed.output(), re.M)
    assert listed.returncode == 0 and row is not None, listed.output()
    gone = _admin(tmp_path, hub, "f-delete", "files", "delete", row.group(1))
    assert gone.returncode == 0 and api(hub, f"/api/files/{row.group(1)}", hub.token)[0] == 404

    refused = _admin(tmp_path, hub, "refused", "tokens", "list", token=secret.group(1))
    lines = [line for line in refused.output().splitlines() if line.strip()]
    assert refused.returncode == 1
    assert lines == ["error: hub answered 403: invalid or revoked token"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_root_redirects_to_admin_page(hub: HubProc) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(hub.url + "/", timeout=10)
    assert caught.value.code == 302
    assert urllib.request.urljoin(hub.url + "/", caught.value.headers["Location"]) == (
        hub.url + "/admin/"
    )
    follow = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with follow.open(hub.url + "/", timeout=10) as r:
        assert r.status == 200 and r.geturl() == hub.url + "/admin/"
        assert b"<html" in r.read().lower()
