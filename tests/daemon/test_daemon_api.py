"""The daemon's API with real processes on loopback: auth, queueing, pause/resume/remove,
limits, priorities, events, the watch folder, and the ``swarmhub remote`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemonproc import SPEC, SWARMHUB, Daemon, EventReader, check_schema, start_daemon, wait_for
from test_daemon_restart import make_torrents

from interop.harness import Proc
from swarmhub.metainfo import make_magnet, read_torrent


@pytest.fixture
def seeder(tmp_path: Path) -> Iterator[tuple[Daemon, list[tuple[Path, Path]]]]:
    """An upload-limited daemon seeding five ~1 MB torrents (still transferring for a
    few seconds, so queue and pause states can be seen)."""
    pairs = make_torrents(tmp_path / "src", 5, 1_000_000, seed=700)
    d = start_daemon(tmp_path / "seed-state", tmp_path, "seeder", "--upload-limit", "600",
                     "--max-active-downloads", "0")
    try:
        for _, torrent in pairs:
            d.add(torrent, [], save_path=str(tmp_path / "src" / "data"))
        wait_for(lambda: [t["state"] for t in d.torrents().values()] == ["seeding"] * 5, 60,
                 "the seeder to check its data")
        yield d, pairs
    finally:
        d.proc.stop()


def test_api_needs_the_token_from_the_state_folder(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "state", tmp_path, "d")
    try:
        assert stat.S_IMODE((tmp_path / "state" / "api.token").stat().st_mode) == 0o600
        for token in (None, "wrong"):
            code, body = d.api("GET", "/api/torrents", token=token)
            assert code == 401, body
            check_schema("/api/torrents", "get", 401, body)
        req = urllib.request.Request(d.url + "/api/openapi.yaml")
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req) as r:
            assert yaml.safe_load(r.read()) == SPEC  # no token needed for the description
        code, body = d.api("POST", "/api/torrents", raw=b"{not json")
        assert code == 400 and "JSON" in body["error"]
        code, body = d.api("POST", "/api/torrents", {"source": "ftp://x"})
        assert code == 400, body
        check_schema("/api/torrents", "post", 400, body)
        code, body = d.api("GET", "/api/torrents/" + "ab" * 20)
        assert code == 404, body
        check_schema("/api/torrents/{id}", "get", 404, body)
        session = d.ok("GET", "/api/session")
        check_schema("/api/session", "get", 200, session)
        limits = d.ok("PUT", "/api/limits", {"download_limit": 1 << 20})
        check_schema("/api/limits", "put", 200, limits)
        assert limits == {"download_limit": 1 << 20, "upload_limit": 0}
        token = d.token
        d.proc.stop()
        d = start_daemon(tmp_path / "state", tmp_path, "d2", state_from_env=True)
        assert d.token == token, "the token is made once"
        assert d.ok("GET", "/api/session")["download_limit"] == 1 << 20, "limits persist"
    finally:
        d.proc.stop()


def test_queue_pause_resume_remove_events_and_watch_folder(
        tmp_path: Path, seeder: tuple[Daemon, list[tuple[Path, Path]]]) -> None:
    seed, pairs = seeder
    peer = f"127.0.0.1:{seed.peer_port()}"
    dl, watch = tmp_path / "dl", tmp_path / "watch"
    d = start_daemon(tmp_path / "state", tmp_path, "leecher", "--download-dir", str(dl),
                     "--max-active-downloads", "2", "--watch", str(watch))
    events = EventReader(d)
    try:
        ids = [d.add(torrent, [peer])["id"] for _, torrent in pairs[:3]]
        code, body = d.api("POST", "/api/torrents", {"torrent": _b64(pairs[0][1])})
        assert code == 409, body
        check_schema("/api/torrents", "post", 409, body)

        # Queueing: the third waits until one of the first two is complete.
        def third_started() -> bool:
            ts = d.torrents()
            if ts[ids[2]]["state"] == "queued":
                return False
            assert ts[ids[0]]["complete"] or ts[ids[1]]["complete"], \
                f"the third started while two downloads ran: {ts}"
            return True

        assert d.torrents()[ids[2]]["state"] == "queued"
        wait_for(third_started, 60, "the queued torrent to start")

        # Pause: peers closed, no progress; resume: it finishes.
        t = d.ok("POST", f"/api/torrents/{ids[2]}/pause")
        check_schema("/api/torrents/{id}/pause", "post", 200, t)
        assert t["state"] == "paused" and t["peers"] == 0
        limited = d.ok("PUT", f"/api/torrents/{ids[2]}/limits", {"upload_limit": 4096})
        check_schema("/api/torrents/{id}/limits", "put", 200, limited)
        assert limited["upload_limit"] == 4096 and limited["download_limit"] == 0
        t = d.ok("POST", f"/api/torrents/{ids[2]}/resume")
        assert t["state"] in ("queued", "checking", "downloading", "seeding")
        wait_for(lambda: all(d.torrents()[i]["complete"] for i in ids), 90, "all three")
        wait_for(lambda: all("completed" in events.kinds(i) for i in ids), 60,
                 "a completed event for each")
        assert events.kinds(ids[2])[:1] == ["added"]
        assert {"paused", "resumed"} <= set(events.kinds(ids[2]))
        assert any(k == "stats" for k, _ in list(events.events))

        # File priorities (0 skip, 1 normal .. 7 sooner) reach the engine.
        files = d.ok("GET", f"/api/torrents/{ids[0]}/files")
        check_schema("/api/torrents/{id}/files", "get", 200, files)
        answer = d.ok("PUT", f"/api/torrents/{ids[0]}/files", {"priorities": [1]})
        check_schema("/api/torrents/{id}/files", "put", 200, answer)
        code, body = d.api("PUT", f"/api/torrents/{ids[0]}/files", {"priorities": [7]})
        assert code == 200 and body["files"][0]["priority"] == 7, body
        assert d.torrents()[ids[0]]["priorities"] == [7]

        # Remove without data keeps the file; with data deletes it.
        kept = dl / pairs[0][0].name
        gone = dl / pairs[1][0].name
        answer = d.ok("DELETE", f"/api/torrents/{ids[0]}")
        check_schema("/api/torrents/{id}", "delete", 200, answer)
        assert answer == {"removed": ids[0], "deleted_data": False}
        assert kept.read_bytes() == pairs[0][0].read_bytes()
        d.ok("DELETE", f"/api/torrents/{ids[1]}?delete_data=true")
        assert not gone.exists()
        assert sorted(d.torrents()) == [ids[2]]
        assert d.api("GET", f"/api/torrents/{ids[0]}")[0] == 404
        wait_for(lambda: "removed" in events.kinds(ids[1]), 60, "a removed event")

        # Watch folder: a .torrent dropped there is added, then renamed .added.
        tmp = watch / ".incoming"
        shutil.copy(pairs[3][1], tmp)
        os.replace(tmp, watch / pairs[3][1].name)
        wid = read_torrent(pairs[3][1]).info_hash.hex()
        wait_for(lambda: (watch / (pairs[3][1].name + ".added")).exists(), 30, "the rename")
        assert not (watch / pairs[3][1].name).exists()
        assert d.torrents()[wid]["source"] == pairs[3][1].name  # no peers known: it waits
        (watch / "junk.torrent").write_bytes(b"not bencode")
        wait_for(lambda: (watch / "junk.torrent.invalid").exists(), 30, "the junk refused")

        # A magnet with the seeder's address (x.pe): metadata from peers, then the data.
        mid = read_torrent(pairs[4][1]).info_hash.hex()
        magnet = make_magnet(read_torrent(pairs[4][1]), peers=[("127.0.0.1", seed.peer_port())])
        code, t = d.api("POST", "/api/torrents", {"source": magnet})
        assert code == 201, t
        check_schema("/api/torrents", "post", 201, t)
        wait_for(lambda: d.torrents()[mid]["complete"], 60, "the magnet's download")
        assert (dl / pairs[4][0].name).read_bytes() == pairs[4][0].read_bytes()
    finally:
        events.close()
        d.proc.stop()


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def test_remote_cli_round_trip(tmp_path: Path,
                               seeder: tuple[Daemon, list[tuple[Path, Path]]]) -> None:
    seed, pairs = seeder
    dl = tmp_path / "dl"
    d = start_daemon(tmp_path / "state", tmp_path, "leecher", "--download-dir", str(dl))
    config = tmp_path / "config.toml"
    # Where the daemon and its state folder (its token) are, from the config file.
    config.write_text(f'daemon = "{d.url}"\ndaemon_state = "{d.state}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMHUB_DAEMON")}
    env["SWARMHUB_CONFIG"] = str(config)

    def remote(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SWARMHUB, "remote", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    # `events --until completed` runs alongside, as a user's second terminal would.
    follower = Proc([*SWARMHUB, "remote", "events", "--until", "completed", "--json",
                     "--token", d.token], env=env, name="events", log=tmp_path / "events.log")
    try:
        wait_for(lambda: d.ok("GET", "/api/session") and True, 10, "the daemon")
        r = remote("list", "--token", "wrong")
        assert r.returncode == 1 and "401" in r.stderr and "Traceback" not in r.stderr
        r = remote("add", str(pairs[0][1]), "--peer", f"127.0.0.1:{seed.peer_port()}",
                   "--paused")  # the token is read from the state folder
        assert r.returncode == 0, r.stderr
        tid = r.stdout.split()[1]
        assert len(tid) == 40
        r = subprocess.run([*SWARMHUB, "remote", "list", "--json"], capture_output=True,
                           text=True, env={**env, "SWARMHUB_DAEMON_TOKEN": d.token}, timeout=60)
        assert r.returncode == 0, r.stderr
        [t] = json.loads(r.stdout)["torrents"]
        assert t["id"] == tid and t["state"] == "paused"
        r = remote("limits", tid[:8], "--download", "2048", "--token", d.token)
        assert r.returncode == 0 and "download 2048 KiB/s" in r.stdout, r.stdout + r.stderr
        r = remote("limits", "--upload", "100", "--token", d.token)
        assert r.returncode == 0 and "upload 100 KiB/s" in r.stdout, r.stdout + r.stderr
        r = remote("resume", tid[:8], "--token", d.token)
        assert r.returncode == 0, r.stderr
        assert follower.wait(90) == 0, follower.describe()
        done = [json.loads(line) for line in follower.output().splitlines()]
        assert done[-1]["event"] == "completed" and done[-1]["id"] == tid
        r = remote("list", "--token", d.token)
        assert tid[:12] in r.stdout and "seeding" in r.stdout and "100.0%" in r.stdout
        r = remote("files", tid[:8], "--priority", "0=1", "--token", d.token)
        assert r.returncode == 0 and pairs[0][0].name in r.stdout, r.stderr
        r = remote("files", tid[:8], "--priority", "5=1", "--token", d.token)
        assert r.returncode == 1 and "INDEX below 1" in r.stderr
        r = remote("pause", tid[:8], "--token", d.token)
        assert r.returncode == 0 and "paused" in r.stdout
        r = remote("remove", tid[:8], "--delete-data", "--token", d.token)
        assert r.returncode == 0 and "and its data" in r.stdout, r.stderr
        assert not (dl / pairs[0][0].name).exists()
        r = remote("pause", tid[:8], "--token", d.token)
        assert r.returncode == 1 and "no torrent" in r.stderr
    finally:
        follower.stop()
        d.proc.stop()


def test_limits_set_while_a_torrent_runs_slow_it_down(
        tmp_path: Path, seeder: tuple[Daemon, list[tuple[Path, Path]]]) -> None:
    """Per-torrent and global download limits, changed mid-transfer, hold the rate."""
    import time

    seed, pairs = seeder
    d = start_daemon(tmp_path / "state", tmp_path, "leecher", "--download-dir",
                     str(tmp_path / "dl"))
    try:
        tid = d.add(pairs[0][1], [f"127.0.0.1:{seed.peer_port()}"],
                    paused=True)["id"]
        limit = 64 * 1024
        # A window may also hold what one socket read brings in (up to 256 KiB) and a
        # piece being hashed; unlimited, the seeder sends ~600 KiB/s (1.8 MB per window).
        slack = 320 * 1024

        def gained(seconds: float) -> tuple[int, float]:
            """Bytes gained over a window of about ``seconds``, and the window measured
            from before the first read to after the last one. A rate is bytes per
            wall-clock second in another process: only an upper bound is asserted, on the
            measured window, so a slow machine (a longer sleep, slow API calls) can only
            make it pass more easily."""
            t0 = time.monotonic()
            start = d.torrents()[tid]["have_bytes"]
            time.sleep(seconds)  # the measuring window, not a wait for something
            end = int(d.torrents()[tid]["have_bytes"])
            return end - start, time.monotonic() - t0

        d.ok("PUT", f"/api/torrents/{tid}/limits", {"download_limit": limit})
        d.ok("POST", f"/api/torrents/{tid}/resume")
        wait_for(lambda: d.torrents()[tid]["have_bytes"] > 0, 30, "the first piece")
        per_torrent, window = gained(3.0)
        assert 0 < per_torrent < window * limit + slack, (per_torrent, window)
        d.ok("PUT", f"/api/torrents/{tid}/limits", {"download_limit": 0})
        d.ok("PUT", "/api/limits", {"download_limit": limit})
        global_, window = gained(3.0)
        assert 0 < global_ < window * limit + slack, (global_, window)
        d.ok("PUT", "/api/limits", {"download_limit": 0})
        wait_for(lambda: d.torrents()[tid]["complete"], 60, "the download once unlimited")
    finally:
        d.proc.stop()


def test_a_torrent_that_cannot_start_is_an_error_event_until_fixed(tmp_path: Path) -> None:
    [(_, torrent)] = make_torrents(tmp_path / "src", 1, 100_000, seed=5)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the save folder should be")
    d = start_daemon(tmp_path / "state", tmp_path, "d")
    events = EventReader(d)
    try:
        tid = d.add(torrent, ["127.0.0.1:9"], save_path=str(blocker))["id"]
        wait_for(lambda: d.torrents()[tid]["state"] == "error", 30, "the error state")
        assert d.torrents()[tid]["error"]
        wait_for(lambda: "error" in events.kinds(tid), 60, "an error event")
        blocker.unlink()
        t = d.ok("POST", f"/api/torrents/{tid}/resume")
        assert t["error"] is None
        wait_for(lambda: d.torrents()[tid]["state"] == "downloading", 30, "a retry")
    finally:
        events.close()
        d.proc.stop()


def test_taken_ports_are_one_line_errors(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "a", tmp_path, "a")
    try:
        peer_port = d.peer_port()
        for flag, taken in (("--listen", f"127.0.0.1:{d.port}"),
                            ("--peer-listen", f"127.0.0.1:{peer_port}")):
            other = "--peer-listen" if flag == "--listen" else "--listen"
            free = "127.0.0.1:0"
            r = subprocess.run([*SWARMHUB, "daemon", "--state", str(tmp_path / "b"), flag,
                                taken, other, free], capture_output=True, text=True,
                               timeout=60, env={**os.environ,
                                                "SWARMHUB_CONFIG": str(tmp_path / "none")})
            assert r.returncode == 1, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and flag in lines[0] and "Traceback" not in r.stderr, lines
    finally:
        d.proc.stop()
