"""Every common mistake ends in one line on stderr and a documented exit status.

Each case runs the real ``swarmhub`` process as a user would, and checks: exactly one line
on stderr, no traceback, the exit status (1 failure, 2 usage), and words that say what to
do. ``-v`` brings the traceback back.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import published_file
from conftest import free_port, need
from hub.hubproc import HubProc
from interop.harness import VENV_PYTHON, make_test_data
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]


def run(*args: str, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="60")  # narrow: a wrapped message would show as 2 lines
    env.pop("SWARMHUB_TRACEBACK", None)
    return subprocess.run([*SWARMHUB, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert lines[0].startswith("error: "), lines
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


@pytest.fixture
def torrent(tmp_path: Path) -> tuple[Path, Path]:
    data = make_test_data(tmp_path / "src", [100_000, 3_000], seed=41, name="dataset")
    t = tmp_path / "dataset.torrent"
    t.write_bytes(torrent_bytes(create_torrent(data, version=TorrentVersion.V1)))
    return t, data


@contextlib.contextmanager
def listening_socket() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_seed_on_a_port_in_use(torrent: tuple[Path, Path]) -> None:
    t, data = torrent
    with listening_socket() as port:
        r = run("seed", str(t), str(data), "--listen", f"127.0.0.1:{port}")
    one_line_error(r, 1, f"127.0.0.1:{port}", "in use", "--listen")


def test_get_listen_on_a_port_in_use(torrent: tuple[Path, Path], tmp_path: Path) -> None:
    t, _ = torrent
    with listening_socket() as port:
        r = run("get", str(t), "-o", str(tmp_path / "dl"), "--peer", "127.0.0.1:9",
                "--listen", f"127.0.0.1:{port}")
    one_line_error(r, 1, "in use", "--listen")


def test_get_from_a_hub_that_is_down(tmp_path: Path) -> None:
    r = run("get", f"http://127.0.0.1:{free_port()}/f/abc", "-o", str(tmp_path))
    one_line_error(r, 1, "cannot connect", "connection refused", "hub running")


def test_https_to_a_plain_http_server(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = run("get", f"https://127.0.0.1:{server.server_port}/f/abc", "-o", str(tmp_path),
                "--timeout", "20")
    finally:
        server.shutdown()
        server.server_close()
    one_line_error(r, 1, "plain HTTP", "http://")


def test_create_into_a_missing_folder(torrent: tuple[Path, Path]) -> None:
    _, data = torrent
    r = run("create", str(data), "-o", "/nonexistent/dir/x.torrent")
    one_line_error(r, 1, "/nonexistent/dir", "does not exist")


def test_seed_a_torrent_with_the_wrong_data(torrent: tuple[Path, Path], tmp_path: Path) -> None:
    t, _ = torrent
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF" + bytes(1000))
    r = run("seed", str(t), str(report), "--listen", "127.0.0.1:0", cwd=tmp_path)
    one_line_error(r, 1, "report.pdf", "folder 'dataset'")


def test_seed_a_torrent_with_missing_data_creates_nothing(torrent: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    t, _ = torrent
    missing = tmp_path / "elsewhere" / "dataset"
    r = run("seed", str(t), str(missing), "--listen", "127.0.0.1:0", cwd=tmp_path)
    one_line_error(r, 1, "does not exist")
    assert not (tmp_path / "elsewhere").exists()


def test_seed_a_torrent_without_data_is_a_usage_error(torrent: tuple[Path, Path]) -> None:
    t, _ = torrent
    one_line_error(run("seed", str(t)), 2, "give the data")


def test_seed_dir_refuses_to_overwrite_another_torrent(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [50_000], seed=42, name="dataset")
    other = make_test_data(tmp_path / "other", [7_000], seed=43, name="dataset")
    existing = tmp_path / "dataset.torrent"
    existing.write_bytes(torrent_bytes(create_torrent(other)))
    before = existing.read_bytes()
    r = run("seed", str(data), "--listen", "127.0.0.1:0", "--duration", "1", cwd=tmp_path)
    one_line_error(r, 1, "dataset.torrent", "--force")
    assert existing.read_bytes() == before
    r = run("seed", str(data), "--listen", "127.0.0.1:0", "--duration", "1", "--force",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert existing.read_bytes() != before


def test_unknown_option_is_one_line_and_exit_2(torrent: tuple[Path, Path]) -> None:
    one_line_error(run("info", str(torrent[0]), "--bogus"), 2, "--bogus", "--help")


def test_missing_torrent_file_is_a_usage_error(tmp_path: Path) -> None:
    one_line_error(run("info", str(tmp_path / "nope.torrent")), 2, "nope.torrent")


def test_bad_listen_address_is_a_usage_error(torrent: tuple[Path, Path]) -> None:
    t, data = torrent
    one_line_error(run("seed", str(t), str(data), "--listen", "nowhere"), 2, "HOST:PORT")


def test_verbose_shows_the_traceback(torrent: tuple[Path, Path]) -> None:
    t, data = torrent
    with listening_socket() as port:
        r = run("seed", str(t), str(data), "--listen", f"127.0.0.1:{port}", "-v")
    assert r.returncode == 1
    assert "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: cannot listen")


# -- a read-only download folder, in every mode --------------------------------------------


@pytest.fixture(scope="module")
def hub_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProc, str]]:
    with published_file(tmp_path_factory.mktemp("hub"), 300_000) as hub_and_url:
        yield hub_and_url


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    need(os.geteuid() == 0, "mounting a read-only tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("mode", ["cs", "p2p", "hybrid"])
def test_read_only_download_folder_from_a_hub(hub_file: tuple[HubProc, str], read_only: Path,
                                              mode: str) -> None:
    _, url = hub_file
    r = run("get", url, "--mode", mode, "-o", str(read_only), "--listen", "127.0.0.1:0",
            "--timeout", "30")
    one_line_error(r, 1, "read-only", "-o DIR")


def test_read_only_download_folder_for_a_torrent(torrent: tuple[Path, Path],
                                                 read_only: Path) -> None:
    r = run("get", str(torrent[0]), "-o", str(read_only / "sub"), "--peer", "127.0.0.1:9")
    one_line_error(r, 1, "read-only", "-o DIR")


def test_lab_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv[0] = 'swarmhub'; "
            "from swarmhub.cli import main; main()")
    r = subprocess.run([str(VENV_PYTHON), "-c", code, "lab", "run", "--loopback", "--peers",
                        "1", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60)
    one_line_error(r, 1, "pip install 'swarmhub[lab]'")


def test_publish_to_a_hub_that_is_down(tmp_path: Path) -> None:
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF" + bytes(100))
    r = run("publish", str(f), "--hub", f"http://127.0.0.1:{free_port()}", "--token", "x")
    one_line_error(r, 1, "cannot connect", "hub running")


def test_get_into_a_file_instead_of_a_folder(torrent: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF")
    r = run("get", str(torrent[0]), "--peer", "127.0.0.1:9", "-o", str(f))
    one_line_error(r, 1, "not a folder", "-o DIR")


def test_interrupt_exits_130_with_one_line(torrent: tuple[Path, Path], tmp_path: Path) -> None:
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([*SWARMHUB, "get", str(torrent[0]), "--peer", "127.0.0.1:9", "-o",
                             str(tmp_path / "dl"), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the first status line: the download loop runs
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130
    assert stderr.splitlines() == ["interrupted; resume data saved"], stderr


def test_the_interrupt_line_does_not_load_rich() -> None:
    """The lab interrupts all its peers at once after a run: rich's console (and its
    highlighter's regexes) made in each only to print one line cost real CPU."""
    probe = ("import asyncio, sys\n"
             "from swarmhub import cli\n"
             "async def cancelled() -> int:\n"
             "    raise asyncio.CancelledError\n"
             "before = set(sys.modules)\n"
             "assert cli._run(cancelled()) == 130\n"
             "print(sorted(m for m in set(sys.modules) - before if m.startswith('rich')))\n")
    r = subprocess.run([str(VENV_PYTHON), "-c", probe], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
    assert r.stderr.splitlines() == ["interrupted; resume data saved"], r.stderr


def test_seed_a_torrent_with_an_empty_folder_creates_nothing(torrent: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    t, _ = torrent
    empty = tmp_path / "elsewhere" / "dataset"
    empty.mkdir(parents=True)
    r = run("seed", str(t), str(empty), "--listen", "127.0.0.1:0", cwd=tmp_path)
    one_line_error(r, 1, "none of the", "give the folder")
    assert list(empty.iterdir()) == []
