"""``swarmhub config show``: every setting's effective value and where it came from.

Kept apart from :mod:`swarmhub.config` (pure loading, no Typer) and mounted on the main app
by :func:`register`, like the hub's and the lab's commands.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from swarmhub import config

__all__ = ["config_app", "register"]

config_app = typer.Typer(
    help="The config file ($XDG_CONFIG_HOME/swarmhub/config.toml): names as the SWARMHUB_* "
    "variables; a flag beats the environment, which beats the file, which beats the default.",
    no_args_is_help=True,
)
_out = Console(soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    docs: Annotated[bool, typer.Option("--docs", help="Add each setting's description.")]
    = False,
) -> None:
    """Print the effective settings as TOML, each with its source (env, file or default)."""
    path = config.config_path()
    state = "found" if path.exists() else "not found"
    _out.print(f"# config file: {path} ({state})", markup=False)
    rows = config.effective()
    width = max(len(f"{r.name} = {config.toml_value(r.value)}") for r in rows)
    for r in rows:
        value = r.value
        if r.name in ("token", "daemon_token") and value:
            value = "<hidden>"  # a secret: shown as set, never printed
        line = f"{r.name} = {config.toml_value(value)}"
        if r.value is None:
            line = f"# {r.name} ="  # unset: a commented line, still valid TOML
        _out.print(f"{line:<{width + 2}}# {r.source}" + (f": {r.doc}" if docs else ""),
                   markup=False)
