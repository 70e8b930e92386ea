"""``import swarmhub`` as a library: the exported names, and the README's examples run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import swarmhub
from cli_helpers import published_file
from interop.harness import VENV_PYTHON, Proc, make_test_data
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

README = Path(__file__).resolve().parents[1] / "README.md"
SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]


def test_exported_members() -> None:
    """Like httpx's test: every name in __all__ exists, comes from swarmhub, and is
    documented; nothing public is missing from __all__."""
    assert set(swarmhub.__all__) == {
        "AuthError", "BencodeError", "ConfigError", "DownloadResult", "Magnet", "Metainfo",
        "MetainfoError", "Progress", "ProtocolError", "Session", "Settings", "StorageError",
        "SwarmhubError", "Torrent", "TorrentStatus", "TorrentVersion",
        "TrackerError", "__version__", "create_torrent", "download", "fetch", "load_torrent",
        "make_magnet", "parse_magnet", "read_torrent", "torrent_bytes"}
    for name in swarmhub.__all__:
        member = getattr(swarmhub, name)
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+.*", member)
            continue
        assert member.__module__.startswith("swarmhub."), name
        assert member.__doc__, f"{name} has no docstring"
    with pytest.raises(AttributeError):
        _ = swarmhub.no_such_name  # type: ignore[attr-defined]


def test_package_is_typed() -> None:
    assert (Path(swarmhub.__file__).parent / "py.typed").exists()


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture
def seeder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """``dataset.torrent`` in the cwd, seeded on loopback; yields the seeder's port."""
    data = make_test_data(tmp_path / "src", [200_000, 70_000], seed=61, name="dataset")
    (tmp_path / "dataset.torrent").write_bytes(
        torrent_bytes(create_torrent(data, version=TorrentVersion.V1)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWARMHUB_STATE_DIR", str(tmp_path / "state"))
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "seed-state"))
    with Proc([*SWARMHUB, "seed", "dataset.torrent", str(data), "--listen", "127.0.0.1:0",
               "--json"], env=env, name="seed", log=tmp_path / "seed.log") as seed:
        yield int(json.loads(seed.wait_for_line(lambda s: '"listening"' in s, 60))["port"])


@pytest.mark.parametrize("index", [0, 1], ids=["download", "session"])
def test_readme_example_runs(seeder: int, tmp_path: Path, index: int) -> None:
    blocks = readme_python_blocks()
    assert len(blocks) == 2, "the README has one example each for download and Session"
    code = blocks[index].replace("6881", str(seeder))
    assert len(code.strip().splitlines()) <= 20
    exec(compile(code, f"README.md example {index}", "exec"), {"__name__": "__readme__"})
    src = tmp_path / "src" / "dataset"
    for f in src.rglob("*"):
        if f.is_file():
            assert (tmp_path / "downloads" / "dataset" / f.relative_to(src)).read_bytes() \
                == f.read_bytes()


def test_download_a_hub_url_over_http(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMHUB_STATE_DIR", str(tmp_path / "state"))
    with published_file(tmp_path / "hub", 400_000, seed=62) as (_, url):
        result = swarmhub.download(url, tmp_path / "dl", mode="cs", timeout=60)
    assert result.mode == "cs" and result.size == 400_000
    assert result.path.read_bytes() == (tmp_path / "hub" / "src" / "file.bin").read_bytes()


def test_download_refuses_to_block_inside_a_loop() -> None:
    import asyncio

    async def inside() -> None:
        with pytest.raises(swarmhub.SwarmhubError, match=r"await swarmhub\.fetch"):
            swarmhub.download("x.torrent", ".")

    asyncio.run(inside())
