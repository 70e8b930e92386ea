"""What ``get``, ``seed``, ``create`` and ``info`` print, as a user or a script sees it."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import swarmhub
from cli_helpers import published_file
from hub.hubproc import HubProc
from interop.harness import VENV_PYTHON, Proc, make_test_data
from swarmhub.metainfo import create_torrent, make_magnet, parse_magnet, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
SIZE = 1_500_000


@pytest.fixture(scope="module")
def hub_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProc, str]]:
    with published_file(tmp_path_factory.mktemp("hub"), SIZE, seed=51) as hub_and_url:
        yield hub_and_url


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"), COLUMNS="60", **extra)


def run(tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWARMHUB, *args], capture_output=True, text=True, timeout=timeout,
                          env=env(tmp_path), cwd=tmp_path)


def run_on_a_terminal(tmp_path: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (what a user sees); returns (status, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SWARMHUB, *args], stdout=subprocess.DEVNULL, stderr=slave,
                            env=env(tmp_path, TERM="xterm"), cwd=tmp_path)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_cs_get_shows_a_bar_on_a_terminal_and_honours_the_limit(
        hub_file: tuple[HubProc, str], tmp_path: Path) -> None:
    _, url = hub_file
    start = time.monotonic()
    code, screen = run_on_a_terminal(tmp_path, "get", url, "--mode", "cs", "-o",
                                     str(tmp_path / "dl"), "--download-limit", "500")
    elapsed = time.monotonic() - start
    assert code == 0, screen
    assert "━" in screen and "%" in screen, screen  # the bar was drawn
    assert "complete:" in screen and "over HTTP" in screen and "average" in screen
    # 1.5 MB at 500 KiB/s: about 3 s (the first read is not delayed)
    assert elapsed > 2.0, elapsed
    assert (tmp_path / "dl" / "file.bin").stat().st_size == SIZE


@pytest.mark.parametrize("mode", ["cs", "hybrid"])
def test_get_prints_json_only_with_json(hub_file: tuple[HubProc, str], tmp_path: Path,
                                        mode: str) -> None:
    _, url = hub_file
    plain = run(tmp_path, "get", url, "--mode", mode, "-o", str(tmp_path / "a"),
                "--listen", "127.0.0.1:0", "--timeout", "60")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == ""
    last = plain.stderr.strip().splitlines()[-1]
    assert last.startswith("complete:"), plain.stderr
    # what happened: size, time, average rate and where the bytes came from
    assert "1.5 MB" in last and " s, average " in last and "/s" in last
    assert ("over HTTP" if mode == "cs" else "from") in last
    assert "0 peers" not in plain.stderr
    with_json = run(tmp_path, "get", url, "--mode", mode, "-o", str(tmp_path / "b"),
                    "--listen", "127.0.0.1:0", "--timeout", "60", "--json")
    assert with_json.returncode == 0, with_json.stderr
    lines = [json.loads(line) for line in with_json.stdout.splitlines()]
    assert lines and lines[-1]["event"] == "finished"
    if mode == "hybrid":  # the swarm core's interest/choke messages (issue 9's churn)
        assert set(lines[-1]["churn"]) == {"interested", "not_interested", "choke",
                                           "unchoke", "reject", "allowed_fast"}


def test_info_prints_whole_links_on_a_narrow_pipe(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [20_000], seed=52, name="a" * 70)
    url = "http://tracker.example:6969/announce/" + "x" * 60
    meta = create_torrent(data, trackers=[[url]])
    t = tmp_path / "x.torrent"
    t.write_bytes(torrent_bytes(meta))
    r = run(tmp_path, "info", str(t))
    assert r.returncode == 0, r.stderr
    magnet_lines = [line for line in r.stdout.splitlines() if "magnet:" in line]
    assert len(magnet_lines) == 1
    assert magnet_lines[0].split()[-1] == make_magnet(meta)
    assert [line.split()[-1] for line in r.stdout.splitlines()
            if line.startswith("tracker")] == [url]


def test_create_says_when_a_torrent_is_hybrid(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [20_000], seed=53)
    hybrid = run(tmp_path, "create", str(data), "-o", str(tmp_path / "h.torrent"))
    assert hybrid.returncode == 0
    assert "aria2" in hybrid.stderr and "--v1" in hybrid.stderr
    v1 = run(tmp_path, "create", str(data), "-o", str(tmp_path / "v1.torrent"), "--v1")
    assert v1.returncode == 0
    assert "aria2" not in v1.stderr


def test_seed_magnet_carries_a_peer_and_the_tracker_and_status_lines(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [30_000], seed=54, name="dataset")
    t = tmp_path / "dataset.torrent"
    t.write_bytes(torrent_bytes(create_torrent(data, version=TorrentVersion.V1)))
    tracker = "http://127.0.0.1:9/announce"
    with Proc([*SWARMHUB, "seed", str(t), str(data), "--listen", "127.0.0.1:0",
               "--tracker", tracker, "--duration", "30"], env=env(tmp_path), cwd=tmp_path,
              name="seed", log=tmp_path / "seed.log") as seed:
        listening = json.loads(seed.wait_for_line(lambda s: '"listening"' in s, 60))
        status = json.loads(seed.wait_for_line(lambda s: '"status"' in s, 30))
        magnet = next(line for line in seed.output().splitlines()
                      if line.startswith("magnet:"))
    parsed = parse_magnet(magnet)
    assert list(parsed.peers) == [("127.0.0.1", listening["port"])]
    assert tracker in parsed.trackers
    assert {"peers", "rate_up", "uploaded", "ratio"} <= set(status)


def test_seed_shows_a_live_line_on_a_terminal(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [30_000], seed=55, name="dataset")
    code, screen = run_on_a_terminal(tmp_path, "seed", str(data), "--v1", "--listen",
                                     "127.0.0.1:0", "--duration", "2.5")
    assert code == 0, screen
    assert "seeding dataset: 0 peers, up 0 B/s, uploaded 0 B, ratio 0.00" in screen, screen


def test_version(tmp_path: Path) -> None:
    r = run(tmp_path, "--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"swarmhub {swarmhub.__version__}"


def test_help_shows_flags_as_flags(tmp_path: Path) -> None:
    for command in (["get"], ["seed"], ["create"], ["hub"], ["lab", "run"]):
        r = run(tmp_path, *command, "--help")
        assert r.returncode == 0, r.stderr
        assert "<bool>" not in r.stdout and "<list[" not in r.stdout, r.stdout
    get_help = run(tmp_path, "get", "--help").stdout
    assert re.search(r"--json\s+Print", get_help), get_help
    assert re.search(r"--peer\s+<str>\.\.\.", get_help), get_help


def test_shell_completion(tmp_path: Path) -> None:
    # With shellingham installed typer ignores "bash" and detects the shell from the
    # process's ancestors, which a CI runner or agent may lack ("Shell  not supported."):
    # typer's own test switch makes the shell an argument.
    script = subprocess.run(
        [*SWARMHUB, "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
        env=env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert script.returncode == 0
    assert "_SWARMHUB_COMPLETE" in script.stdout
    completed = subprocess.run(
        [*SWARMHUB], capture_output=True, text=True, timeout=60,
        env=env(tmp_path, _SWARMHUB_COMPLETE="complete_bash", COMP_WORDS="swarmhub get --dow",
                COMP_CWORD="2"))
    assert completed.stdout.split() == ["--download-limit"]


def test_help_shows_the_defaults_written_in_help_texts(tmp_path: Path) -> None:
    """typer renders help with rich markup, where an unescaped ``[default: x]`` is a tag and
    vanishes: every command's help strings are checked, and two are rendered for real."""
    import typer.main
    from rich.markup import RE_TAGS

    from swarmhub.cli import app

    swallowed: list[str] = []

    def walk(cmd: Any, path: str) -> None:
        texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
        swallowed.extend(f"{path}: {m.group(0)}" for t in texts for m in RE_TAGS.finditer(t)
                         if not m.group(2))  # group 2: the escaping backslashes
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "swarmhub")
    assert swallowed == []
    wide = dict(env(tmp_path), COLUMNS="300", TERMINAL_WIDTH="300")
    for command, shown in ((["get"], ["[default: download_rate_limit]",
                                      "[default: prefer, or SWARMHUB_ENCRYPTION]"]),
                           (["seed"], ["[default: listen_interfaces, 0.0.0.0:6881]",
                                       "[default: upload_rate_limit]"])):
        r = subprocess.run([*SWARMHUB, *command, "--help"], capture_output=True, text=True,
                           timeout=60, env=wide, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        text = " ".join(r.stdout.replace("│", " ").split())
        for default in shown:
            assert default in text, text
        assert "\\[" not in text, text
