"""Settings: defaults, validation, from_mapping/from_env coercion, presets, describe()."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import swarmhub
from swarmhub.errors import SwarmhubError
from swarmhub.settings import OTHER_ENV, ConfigError, Settings


def test_safe_defaults() -> None:
    s = Settings()
    assert s.listen_interfaces == "0.0.0.0:6881"
    assert s.listen_addresses() == [("0.0.0.0", 6881)]
    assert (s.max_connections, s.max_connections_per_torrent, s.unchoke_slots) == (200, 50, 4)
    assert (s.download_rate_limit, s.upload_rate_limit) == (0, 0)
    assert not hasattr(s, "enable_dht")  # removed until DHT exists: no knob that does nothing
    assert s.peer_id_prefix == "-SH0100-" and s.web_seed_request_size == 4 * 1024 * 1024
    assert s.hash_fail_ban_threshold == 2 and s.request_queue_time == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_connections = 1  # type: ignore[misc]


def test_replace_validates_and_checks_names() -> None:
    s = Settings().replace(max_connections=10, rechoke_interval=5)
    assert s.max_connections == 10 and s.rechoke_interval == 5.0
    assert isinstance(s.rechoke_interval, float)
    with pytest.raises(ConfigError, match="max_connections must be >= 1"):
        Settings().replace(max_connections=0)
    with pytest.raises(ConfigError, match="must be int"):
        Settings().replace(max_connections="10")
    with pytest.raises(ConfigError, match="must be bool"):
        Settings().replace(super_seeding=1)
    with pytest.raises(ConfigError, match="did you mean max_connections"):
        Settings().replace(max_conections=3)
    with pytest.raises(ConfigError, match="min_request_queue"):
        Settings().replace(min_request_queue=600)
    with pytest.raises(ConfigError, match="keepalive_interval"):
        Settings().replace(peer_timeout=30.0)
    with pytest.raises(ConfigError, match="listen_interfaces"):
        Settings().replace(listen_interfaces="localhost")
    with pytest.raises(ConfigError, match="peer_id_prefix"):
        Settings().replace(peer_id_prefix="-" * 13)
    assert issubclass(ConfigError, SwarmhubError)


def test_from_mapping_coerces_strings() -> None:
    s = Settings.from_mapping(
        {
            "download-rate-limit": "1MiB",
            "upload_rate_limit": "2MB",
            "torrent_upload_rate_limit": "512k",
            "super_seeding": "off",
            "peer_timeout": "90.5",
            "max_connections": "300",
            "listen_interfaces": "127.0.0.1:0,[::1]:7000",
            "hash_threads": 3,
        }
    )
    assert s.download_rate_limit == 1024 * 1024
    assert s.upload_rate_limit == 2_000_000
    assert s.torrent_upload_rate_limit == 512 * 1024
    assert s.super_seeding is False
    assert s.peer_timeout == 90.5 and s.max_connections == 300 and s.hash_threads == 3
    assert s.listen_addresses() == [("127.0.0.1", 0), ("::1", 7000)]


def test_from_mapping_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'upload_limit'.*upload_rate_limit"):
        Settings.from_mapping({"upload_limit": "1"})
    with pytest.raises(ConfigError, match=r"unknown setting 'zzz'$"):
        Settings.from_mapping({"zzz": "1"})
    with pytest.raises(ConfigError, match="super_seeding expects yes/no"):
        Settings.from_mapping({"super_seeding": "maybe"})
    with pytest.raises(ConfigError, match="max_connections expects a whole number"):
        Settings.from_mapping({"max_connections": "lots"})
    with pytest.raises(ConfigError, match="expects a whole number"):
        Settings.from_mapping({"max_connections": "1.5"})
    with pytest.raises(ConfigError, match="peer_timeout expects a number"):
        Settings.from_mapping({"peer_timeout": "soon"})


def test_from_env_reads_prefixed_settings_only() -> None:
    env = {
        "SWARMHUB_MAX_CONNECTIONS": "120",
        "SWARMHUB_SUPER_SEEDING": "0",
        "SWARMHUB_STRICT": "1",  # another part of swarmhub's switch: ignored
        "SWARMHUB_STATE_DIR": "/tmp/x",
        "MAX_CONNECTIONS": "5",
        "SWARMHUB_UPLOAD_RATE_LIMIT": "100K",
    }
    s = Settings.from_env(environ=env)
    assert s.max_connections == 120 and not s.super_seeding
    assert s.upload_rate_limit == 100 * 1024
    other = Settings.from_env(prefix="SH_", environ={"SH_UNCHOKE_SLOTS": "8"})
    assert other.unchoke_slots == 8
    with pytest.raises(ConfigError, match="max_connections"):
        Settings.from_env(environ={"SWARMHUB_MAX_CONNECTIONS": "0"})


def test_from_env_refuses_unknown_variables_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"SWARMHUB_MAX_CONECTIONS.*SWARMHUB_MAX_CONNECTIONS"):
        Settings.from_env(environ={"SWARMHUB_MAX_CONECTIONS": "10"})
    with pytest.raises(ConfigError, match="unknown environment variable SWARMHUB_ENABLE_DHT"):
        Settings.from_env(environ={"SWARMHUB_ENABLE_DHT": "1"})
    with pytest.raises(ConfigError, match=r"SWARMHUB_ZZZZZZ$"):
        Settings.from_env(environ={"SWARMHUB_ZZZZZZ": "1"})


def test_from_env_accepts_the_variables_of_other_parts() -> None:
    """SWARMHUB_PURE (swarmhub._compiled) is no setting, yet no error either: every
    command that loads settings (get, seed) ran into it."""
    from swarmhub._compiled import PURE_ENV

    assert Settings.from_env(environ={PURE_ENV: "1", "SWARMHUB_LAB_GATE": "/x"}) == Settings()


def test_every_variable_swarmhub_reads_or_sets_is_accepted() -> None:
    """Each ``SWARMHUB_*`` name written in the source is a setting or in ``OTHER_ENV``: a
    process that finds one in its environment (the lab passes its own down to every host)
    must not refuse to start (``SWARMHUB_LAB_SOURCE_NICE`` unregistered failed every
    swarmhub client of a lab run while libtorrent's ran)."""
    src = Path(swarmhub.__file__).parent
    names = {n.upper() for n, _, _ in Settings.describe()} | set(OTHER_ENV)
    found = {m for p in src.rglob("*.py")
             for m in re.findall(r"[\"']SWARMHUB_([A-Z0-9_]+)[\"']", p.read_text())}
    assert "LAB_SOURCE_NICE" in found  # the scan sees the source
    assert sorted(found - names) == []
    assert Settings.from_env(environ={f"SWARMHUB_{n}": "0" for n in found & OTHER_ENV}) \
        == Settings()


def test_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMHUB_DISK_THREADS", "4")
    assert Settings.from_env().disk_threads == 4


def test_presets() -> None:
    low, box, base = Settings.low_memory(), Settings.seedbox(), Settings()
    assert low.max_connections < base.max_connections < box.max_connections
    assert low.read_cache_bytes < base.read_cache_bytes < box.read_cache_bytes
    assert box.unchoke_slots > base.unchoke_slots
    assert Settings.seedbox(unchoke_slots=8).unchoke_slots == 8
    with pytest.raises(ConfigError):
        Settings.low_memory(nonsense=1)


def test_describe_lists_every_field_with_default_and_doc() -> None:
    rows = Settings.describe()
    names = [f.name for f in dataclasses.fields(Settings)]
    assert [r[0] for r in rows] == names
    defaults = Settings()
    for name, default, doc in rows:
        assert getattr(defaults, name) == default
        assert isinstance(doc, str) and len(doc) > 10, name
