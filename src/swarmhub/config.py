"""The config file: ``$XDG_CONFIG_HOME/swarmhub/config.toml`` (``~/.config/swarmhub/...``).

Why a file: a limit or a state folder set once should not need an environment variable in
every shell. The file uses the names of the ``SWARMHUB_*`` variables, lower case and
without the prefix, at the top level::

    max_connections = 100
    upload_rate_limit = "2MiB"
    state_dir = "/srv/swarmhub/state"

Precedence, for every name: a command-line flag, then the environment, then this file,
then the default. Engine settings (:class:`~swarmhub.settings.Settings`) are built by
:func:`load_settings`: the file becomes the base of ``Settings.from_mapping`` and the
environment goes on top with ``Settings.from_env``. The few names that are not engine
settings (``state_dir``, ``hub``, ``token``) are read by the CLI through their
``SWARMHUB_*`` variables, so :func:`apply_environment_defaults` sets those variables from
the file when they are unset. ``SWARMHUB_CONFIG=FILE`` reads another file; a missing file
is no error, an unknown name is (with the closest name suggested).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmhub._records import value_methods
from swarmhub.settings import OTHER_ENV, ConfigError, Settings

__all__ = [
    "CLI_KEYS",
    "OTHER_VARIABLES",
    "Effective",
    "apply_environment_defaults",
    "config_path",
    "effective",
    "load_file",
    "load_settings",
]

PREFIX = "SWARMHUB_"

#: Names the CLI reads from ``SWARMHUB_<NAME>`` that are not engine settings.
CLI_KEYS: dict[str, str] = {
    "state_dir": "where resume data lives (default $XDG_STATE_HOME/swarmhub)",
    "hub": "default hub URL for `swarmhub admin` and `publish`",
    "token": "hub token for private files and admin commands",
    "daemon": "URL of the daemon's API for `swarmhub remote` (default http://127.0.0.1:9091)",
    "daemon_token": "API token for `swarmhub remote` (default: the local daemon's api.token)",
    "daemon_state": "state folder of `swarmhub daemon` (default $XDG_STATE_HOME/swarmhub/daemon)",
}


#: Every ``SWARMHUB_*`` variable that is not an engine setting (a check for unknown
#: variables must let these through).
OTHER_VARIABLES: frozenset[str] = frozenset(
    PREFIX + name for name in OTHER_ENV | {k.upper() for k in CLI_KEYS})


def _setting_names() -> list[str]:
    return [name for name, _, _ in Settings.describe()]


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The file to read: ``SWARMHUB_CONFIG``, else the XDG config home's ``swarmhub/``."""
    env = os.environ if environ is None else environ
    explicit = env.get(PREFIX + "CONFIG")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "swarmhub" / "config.toml"


def load_file(path: Path) -> dict[str, Any]:
    """The file's names and values (``{}`` when there is no file), names checked."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    import tomllib  # only with a file: every command reads the config, few have one

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    known = _setting_names() + list(CLI_KEYS)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.strip().lower().replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else \
                "; `swarmhub config show` lists every name"
            raise ConfigError(f"unknown setting {key!r} in {path}{hint}")
        if isinstance(value, dict | list):
            raise ConfigError(f"{key} in {path} must be a single value, not a "
                              f"{'table' if isinstance(value, dict) else 'list'}")
        out[name] = value
    return out


def load_settings(environ: Mapping[str, str] | None = None,
                  path: Path | None = None) -> Settings:
    """Engine settings from the file and the environment (flags go on top, by the caller)."""
    env = os.environ if environ is None else environ
    path = path or config_path(env)
    file_values = load_file(path)
    engine = {k: v for k, v in file_values.items() if k not in CLI_KEYS}
    try:
        base = Settings.from_mapping(engine)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Settings.from_env(environ=env, base=base)


#: Variables :func:`apply_environment_defaults` set from the file (their source is the file).
_FROM_FILE: set[str] = set()


def apply_environment_defaults(environ: MutableMapping[str, str] | None = None,
                               path: Path | None = None) -> None:
    """Set ``SWARMHUB_STATE_DIR``/``_HUB``/``_TOKEN`` from the file where they are unset, so
    code that reads those variables (and options with ``envvar=``) sees the file."""
    env = os.environ if environ is None else environ
    values = load_file(path or config_path(env))
    for key in CLI_KEYS:
        var = PREFIX + key.upper()
        if key in values and var not in env:
            env[var] = str(values[key])
            _FROM_FILE.add(var)


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Effective:
    """One name's effective value and where it came from."""

    name: str
    value: Any
    #: ``"env SWARMHUB_X"``, ``"file PATH"`` or ``"default"``.
    source: str
    doc: str


def effective(environ: Mapping[str, str] | None = None,
              path: Path | None = None) -> list[Effective]:
    """Every name with its effective value and source, for ``swarmhub config show``."""
    env = os.environ if environ is None else environ
    path = path or config_path(env)
    file_values = load_file(path)
    settings = load_settings(env, path)
    rows = []
    for name, _default, doc in Settings.describe():
        rows.append(Effective(name, getattr(settings, name),
                              _source(name, env, file_values, path), doc))
    for name, doc in CLI_KEYS.items():
        var = PREFIX + name.upper()
        if var in env:
            value: Any = env[var]
        elif name in file_values:
            value = file_values[name]
        else:
            value = None
        rows.append(Effective(name, value, _source(name, env, file_values, path), doc))
    return rows


def _source(name: str, env: Mapping[str, str], file_values: Mapping[str, Any],
            path: Path) -> str:
    var = PREFIX + name.upper()
    if var in env and var not in _FROM_FILE:
        return f"env {var}"
    if name in file_values:
        return f"file {path}"
    return "default"


def toml_value(value: Any) -> str:
    """``value`` as TOML, so ``config show`` output can be pasted into the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return '""'
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
