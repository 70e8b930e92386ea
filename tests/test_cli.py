"""The ``swarmhub`` command as a user types it (real processes where it matters)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import need
from interop.harness import VENV_PYTHON, Proc, make_test_data
from swarmhub.bencode import bdecode, bencode
from swarmhub.cli import app
from swarmhub.metainfo import create_torrent, read_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

runner = CliRunner()
SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]


def test_create_then_info_shows_hashes_and_magnet(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [100_000, 2_000], seed=1)
    out = tmp_path / "t.torrent"
    result = runner.invoke(app, ["create", str(data), "-o", str(out), "--piece-size", "16"])
    assert result.exit_code == 0, result.output
    meta = read_torrent(out)
    assert meta.piece_length == 16 * 1024
    assert meta.info_hash_v1 is not None and meta.info_hash_v2 is not None
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    assert meta.info_hash_v1.hex() in result.output
    assert meta.info_hash_v2.hex() in result.output
    assert "magnet:?xt=urn:btih:" in result.output


def test_swarmhub_profile_writes_a_cpu_profile_per_process(tmp_path: Path) -> None:
    """SWARMHUB_PROFILE (how a lab peer is profiled): a dump named by the process's pid,
    holding the command's own functions."""
    import pstats

    data = make_test_data(tmp_path / "src", [20_000], seed=4)
    out = tmp_path / "t.torrent"
    env = {**os.environ, "SWARMHUB_PROFILE": str(tmp_path / "p-{pid}.prof")}
    proc = subprocess.run([*SWARMHUB, "create", str(data), "-o", str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    dumps = list(tmp_path.glob("p-*.prof"))
    assert len(dumps) == 1 and dumps[0].stem[2:].isdigit()
    funcs = pstats.Stats(str(dumps[0])).stats  # type: ignore[attr-defined]
    assert any(name == "create" and path.endswith("cli.py") for path, _, name in funcs)


def test_create_v1_has_no_pad_files(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [100_000, 2_000, 5], seed=2)
    out = tmp_path / "t.torrent"
    assert runner.invoke(app, ["create", str(data), "-o", str(out), "--v1"]).exit_code == 0
    meta = read_torrent(out)
    assert meta.info_hash_v2 is None
    assert not any(f.pad for f in meta.files)


def test_get_refuses_path_traversal_before_writing(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [50_000, 60_000], seed=3)
    meta = create_torrent(data, piece_length=16 * 1024, version=TorrentVersion.V1)
    raw = bdecode(torrent_bytes(meta))
    raw[b"info"][b"files"][0][b"path"] = [b"..", b"..", b"evil.txt"]
    bad = tmp_path / "evil.torrent"
    bad.write_bytes(bencode(raw))
    dest = tmp_path / "dl"
    result = subprocess.run([*SWARMHUB, "get", str(bad), "-o", str(dest), "--peer",
                             "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert ".." in result.stderr and "error" in result.stderr
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()


def test_get_without_any_peer_source_is_a_clear_error(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [10_000], seed=4)
    out = tmp_path / "t.torrent"
    out.write_bytes(torrent_bytes(create_torrent(data)))
    result = runner.invoke(app, ["get", str(out), "-o", str(tmp_path / "dl")])
    assert result.exit_code == 2
    assert "--peer" in result.output


def test_malformed_torrent_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.torrent"
    bad.write_bytes(b"d4:infod4:name")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert "bencode" in result.output


def test_full_disk_stops_get_with_a_clear_error_and_keeps_verified(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "mounting a small tmpfs needs root")
    data = make_test_data(tmp_path / "src", [3_000_000], seed=5)
    meta = create_torrent(data, piece_length=64 * 1024, version=TorrentVersion.V1)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"))
    try:
        with Proc([*SWARMHUB, "seed", str(tfile), str(data), "--listen", "127.0.0.1:0"],
                  env=env, name="seed", log=tmp_path / "seed.log") as seed:
            line = seed.wait_for_line(lambda s: '"event": "listening"' in s, 60)
            port = json.loads(line)["port"]
            get = subprocess.run(
                [*SWARMHUB, "get", str(tfile), "-o", str(mnt), "--json", "--peer",
                 f"127.0.0.1:{port}", "--timeout", "60"],
                capture_output=True, text=True, timeout=90, env=env)
        assert get.returncode == 1, get.stderr
        assert "disk full" in get.stderr
        # What was written before the disk filled up is still there and correct.
        part = (mnt / data.name).read_bytes()
        src = data.read_bytes()
        written = [i for i in range(0, 1_000_000 // 65536) if part[i * 65536:(i + 1) * 65536]
                   == src[i * 65536:(i + 1) * 65536]]
        assert written, "no verified piece survived"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("flag", ["--v1", "--v2"])
def test_seed_a_folder_prints_a_magnet_link(tmp_path: Path, flag: str) -> None:
    data = make_test_data(tmp_path / "src", [40_000, 50_000], seed=6)
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"))
    with Proc([*SWARMHUB, "seed", str(data), flag, "--listen", "127.0.0.1:0",
               "--duration", "30"], env=env, cwd=tmp_path, name="seed",
              log=tmp_path / "seed.log") as seed:
        line = seed.wait_for_line(lambda s: s.startswith("magnet:?"), 60)
    assert ("urn:btih:" in line) == (flag == "--v1")
    assert ("urn:btmh:" in line) == (flag == "--v2")
    assert (tmp_path / f"{data.name}.torrent").exists()


@pytest.mark.parametrize("command", ["get", "seed"])
def test_an_unknown_encryption_mode_is_a_clear_error(tmp_path: Path, command: str) -> None:
    data = make_test_data(tmp_path / "src", [1_000], seed=3)
    result = runner.invoke(app, [command, str(data), "--encryption", "maybe"])
    assert result.exit_code == 2
    assert "--encryption must be prefer, require or off, not 'maybe'" in result.output


def test_no_pex_is_an_option_of_get_and_seed() -> None:
    for command in ("get", "seed"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--no-pex" in result.output
