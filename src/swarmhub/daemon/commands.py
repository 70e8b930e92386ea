"""``swarmhub daemon``: run the daemon (kept out of ``cli.py`` so other commands do not
import the server); ``cli.py`` calls :func:`register`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["default_state", "register"]

_out = Console(soft_wrap=True, highlight=False)


def default_state() -> Path:
    """``$XDG_STATE_HOME/swarmhub/daemon`` (``SWARMHUB_DAEMON_STATE`` overrides it)."""
    env = os.environ.get("SWARMHUB_DAEMON_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "swarmhub" / "daemon"


def _addr(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise typer.BadParameter(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def daemon(
    state: Annotated[Path | None, typer.Option(
        help="State folder (API token, torrents, resume data) (default: "
        "$XDG_STATE_HOME/swarmhub/daemon, or SWARMHUB_DAEMON_STATE).")] = None,
    listen: Annotated[str, typer.Option(
        help="HOST:PORT of the JSON API (keep it on loopback unless you need more).")]
    = "127.0.0.1:9091",
    peer_listen: Annotated[str, typer.Option(
        help="HOST:PORT for BitTorrent peers (port 0: any free port).")] = "0.0.0.0:6881",
    download_dir: Annotated[Path | None, typer.Option(
        help="Where torrents are saved unless an add says otherwise (default: STATE/downloads).")]
    = None,
    watch: Annotated[Path | None, typer.Option(
        help="Watch folder: each new *.torrent is added, then renamed *.torrent.added.")]
    = None,
    max_active_downloads: Annotated[int, typer.Option(
        help="Downloads running at once; the rest wait in the queue (0 = no cap). Seeds do "
        "not count.", min=0)] = 3,
    download_limit: Annotated[int | None, typer.Option(
        help="Global KiB/s, 0 = unlimited (default: download_rate_limit, or what the API "
        "set last).")] = None,
    upload_limit: Annotated[int | None, typer.Option(
        help="Global KiB/s, 0 = unlimited (default: upload_rate_limit, or what the API set "
        "last).")] = None,
    stats_interval: Annotated[float, typer.Option(
        help="Seconds between 'stats' events.", min=0.1)] = 2.0,
    verbose: Annotated[int, typer.Option("-v", count=True, help="More logging.")] = 0,
) -> None:
    """Run many torrents in one process behind a JSON API (swarmhub remote talks to it).

    The API token is made on the first start in STATE/api.token (mode 0600); send it as
    'Authorization: Bearer TOKEN'. The API is described at /api/openapi.yaml. Torrents,
    their settings and verified pieces survive a restart, or a kill -9.
    """
    from swarmhub.aio import run_cancellable
    from swarmhub.config import load_settings
    from swarmhub.daemon.app import serve
    from swarmhub.daemon.manager import Manager
    from swarmhub.daemon.state import StateDir

    logging.basicConfig(level=max(logging.WARNING - 10 * verbose, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _addr(listen, "--listen")
    peer = _addr(peer_listen, "--peer-listen")
    root = (state or default_state()).expanduser().resolve()
    sd = StateDir(root)
    settings = load_settings()
    flags = {"download_rate_limit": download_limit, "upload_rate_limit": upload_limit}
    sd.prepare()
    token, fresh = sd.ensure_token()
    manager = Manager(sd, settings, download_dir=(download_dir or root / "downloads").resolve(),
                      peer_listen=peer, max_active=max_active_downloads, watch=watch,
                      stats_interval=stats_interval)

    async def go() -> int:
        async with manager:
            given = {k: v * 1024 for k, v in flags.items() if v is not None}
            if given:  # a flag beats what the API set before the restart
                down, up = manager.global_limits()
                manager.set_global_limits(given.get("download_rate_limit", down),
                                          given.get("upload_rate_limit", up))

            def ready(actual: int) -> None:
                _out.print(f"daemon listening on http://{host}:{actual} "
                           f"(peers on port {manager.session.listen_port})")
                _out.print(f"API token in {sd.token_file}" + (" (new)" if fresh else ""))
                _out.print(f"{len(manager.entries)} torrent(s) restored")

            await serve(manager, token, host, port, ready)
        return 0

    raise typer.Exit(run_cancellable(go()))


def register(app: typer.Typer) -> None:
    """Add ``daemon`` and ``remote`` to the main CLI."""
    from swarmhub.remote import remote_app

    app.command("daemon")(daemon)
    app.add_typer(remote_app, name="remote")
