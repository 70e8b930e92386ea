"""The config file: names as SWARMHUB_*, flag > env > file > default, `config show`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from interop.harness import VENV_PYTHON
from swarmhub import config
from swarmhub.settings import ConfigError, Settings

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swarmhub" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_path_follows_xdg(tmp_path: Path) -> None:
    assert config.config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == \
        tmp_path / "swarmhub" / "config.toml"
    assert config.config_path({"HOME": "/h", "SWARMHUB_CONFIG": "/etc/x.toml"}) == \
        Path("/etc/x.toml")


def test_env_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_connections = 100\nupload_rate_limit = "2MiB"\n'
                           "unchoke-slots = 6\n")
    s = config.load_settings({"SWARMHUB_MAX_CONNECTIONS": "7"}, path)
    assert s.max_connections == 7  # env
    assert s.upload_rate_limit == 2 * 1024 * 1024  # file, with a size suffix
    assert s.unchoke_slots == 6  # file, dashes allowed as in from_mapping
    assert s.rechoke_interval == Settings().rechoke_interval  # default
    sources = {r.name: r.source for r in config.effective({"SWARMHUB_MAX_CONNECTIONS": "7"},
                                                          path)}
    assert sources["max_connections"] == "env SWARMHUB_MAX_CONNECTIONS"
    assert sources["upload_rate_limit"] == f"file {path}"
    assert sources["rechoke_interval"] == "default"


def test_missing_file_is_the_defaults(tmp_path: Path) -> None:
    assert config.load_settings({}, tmp_path / "none.toml") == Settings()


def test_unknown_name_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "max_conections = 100\n")
    with pytest.raises(ConfigError, match=r"max_conections.*did you mean max_connections\?"):
        config.load_settings({}, path)


def test_bad_value_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_connections = "lots"\n')
    with pytest.raises(ConfigError, match=str(path)):
        config.load_settings({}, path)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_settings({}, write(tmp_path, "max_connections = [\n"))


def test_cli_names_fill_unset_variables_only(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_dir = "/from/file"\nhub = "http://h:1"\n')
    env = {"SWARMHUB_HUB": "http://env:2"}
    config.apply_environment_defaults(env, path)
    assert env == {"SWARMHUB_HUB": "http://env:2", "SWARMHUB_STATE_DIR": "/from/file"}


def test_flags_beat_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from swarmhub.cli import _listen, _settings

    write(tmp_path, "download_rate_limit = 1000\nupload_rate_limit = 2000\n"
                    'listen_interfaces = "127.0.0.1:7000"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SWARMHUB_CONFIG", raising=False)
    monkeypatch.setenv("SWARMHUB_UPLOAD_RATE_LIMIT", "3000")
    s = _settings(None, 5)
    assert s.download_rate_limit == 5 * 1024  # flag
    assert s.upload_rate_limit == 3000  # env
    assert _settings(None, None).download_rate_limit == 1000  # file
    assert _listen(None, "0.0.0.0:0") == ("127.0.0.1", 7000)  # file
    assert _listen("127.0.0.1:0", "0.0.0.0:0") == ("127.0.0.1", 0)  # flag


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SWARMHUB_")}
    full.update(PYTHONPATH=os.environ.get("PYTHONPATH", ""), XDG_CONFIG_HOME=str(tmp_path),
                **env)
    return subprocess.run([*SWARMHUB, *args], capture_output=True, text=True, timeout=60,
                          env=full)


def test_config_show_prints_values_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_connections = 100\ntoken = "s3cret"\n')
    r = cli(tmp_path, "config", "show", SWARMHUB_UNCHOKE_SLOTS="9")
    assert r.returncode == 0, r.stderr
    lines = {line.split(" = ")[0]: line for line in r.stdout.splitlines() if " = " in line}
    assert lines["max_connections"].split("#")[1].strip() == f"file {path}"
    assert "= 100" in lines["max_connections"]
    assert "env SWARMHUB_UNCHOKE_SLOTS" in lines["unchoke_slots"]
    assert "default" in lines["rechoke_interval"]
    assert "s3cret" not in r.stdout  # a token is never printed
    assert f"file {path}" in lines["token"]


def test_unknown_name_is_one_line_for_every_command(tmp_path: Path) -> None:
    write(tmp_path, "upload_limit = 5\n")
    r = cli(tmp_path, "config", "show")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "did you mean upload_rate_limit?" in r.stderr
