"""CLI commands of the hub: ``swarmhub hub`` (run one), ``swarmhub hub token --new`` (a new
admin token, offline), ``swarmhub publish`` (upload to one) and ``swarmhub admin ...``.

Kept out of ``cli.py`` so the peer CLI does not import the hub's server code; ``cli.py``
calls :func:`register` to add them to its Typer app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncGenerator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from swarmhub.aio import run_cancellable
from swarmhub.errors import SwarmhubError

if TYPE_CHECKING:
    from swarmhub.discovery.httpget import Response, Upload

__all__ = ["default_data_dir", "hub_app", "publish_file", "register", "run_hub"]

log = logging.getLogger(__name__)
_err = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever its length
_out = Console(soft_wrap=True)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/swarmhub/hub`` (``~/.local/share/swarmhub/hub``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "swarmhub" / "hub"


def _dht_bootstrap(dht: bool, bootstrap: str | None,
                   peers: tuple[str, int] | None) -> str | None:
    """The seeder's DHT bootstrap list, None when the hub stays off the DHT."""
    if bootstrap is None and not dht:
        return None
    if peers is None:
        raise typer.BadParameter("the DHT runs on the embedded seeder: not with "
                                 "--peer-listen off", param_hint="--dht")
    if bootstrap is not None:
        return bootstrap
    from swarmhub.config import load_settings

    return load_settings().dht_bootstrap


def _addr(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise typer.BadParameter(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """The hub serves files with sendfile, which uvloop lacks: use the standard loop."""
    return run_cancellable(coro, use_uvloop=False)


# ------------------------------------------------------------------------------ hub


#: The hub's data files are its own: nothing it creates is readable by other users.
_HUB_UMASK = 0o077

hub_app = typer.Typer(add_completion=False)


async def run_hub(config: Any, host: str, port: int, *, ready: Any = None,
                  show_token: bool = True) -> int:
    """Serve the hub until cancelled; print the admin token on the first start.

    The token is made only once HTTP and the seeder listen: a start that fails creates
    nothing, so the next successful one still shows the first token. ``ready`` (an event
    with ``set()``) is set once the hub serves (``--workers``: the next one may start).
    """
    from swarmhub.hub.api import HUB_KEY
    from swarmhub.hub.app import start_hub
    from swarmhub.hub.auth import ensure_admin_token

    runner = await start_hub(config, host, port)
    try:
        catalog = runner.app[HUB_KEY].catalog
        token = await catalog.run(ensure_admin_token, catalog) if show_token else None
        if ready is not None:
            ready.set()
        _out.print(f"hub listening on http://{host}:{port} (public URL {config.base_url})")
        dht = getattr(runner.app[HUB_KEY].seeder, "dht", None)
        if dht is not None:
            _out.print(f"seeder on the DHT: UDP port {dht.port}")
        if token is not None:
            _out.print(f"admin page:  {config.base_url}/admin")
            _out.print(f"admin token: {token}")
            _out.print("(shown once: only its hash is stored)")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0


@hub_app.callback(invoke_without_command=True)
def hub(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option(help="Data folder (catalog, blobs); default: XDG data dir.")
    ] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for HTTP.")] = "127.0.0.1:8080",
    public_url: Annotated[
        str | None,
        typer.Option(help="URL clients use to reach the hub (goes into torrents)."),
    ] = None,
    peer_listen: Annotated[
        str, typer.Option(help="HOST:PORT of the embedded seeder, or 'off'.")
    ] = "127.0.0.1:7881",  # api.DEFAULT_PEER_PORT (not imported: keeps the CLI light)
    max_transfers: Annotated[
        int, typer.Option(help="Concurrent HTTP downloads before 503 (0 = no cap).", min=0)
    ] = 0,
    upload_limit: Annotated[
        int, typer.Option(help="HTTP upload cap in KiB/s over all downloads (0 = none).", min=0)
    ] = 0,
    max_upload: Annotated[int, typer.Option(help="Largest accepted upload in MiB.", min=1)] = 64
    * 1024,
    tracker_interval: Annotated[
        int, typer.Option(help="Re-announce interval given to clients, seconds.", min=10)
    ] = 1800,
    trust_proxy: Annotated[
        bool,
        typer.Option(help="Behind a reverse proxy: take client addresses from "
                     "X-Forwarded-For and honour the tracker's ip= (off: clients cannot "
                     "claim another address)."),
    ] = False,
    tracker_peers_per_ip: Annotated[
        int,
        typer.Option(help="Tracker entries one address may hold per swarm (0 = no cap; "
                     "loopback labs with many peers on 127.0.0.1 need 0).", min=0),
    ] = 8,
    tracker_announce_rate: Annotated[
        float,
        typer.Option(help="Announces per second one address may send (0 = no limit).", min=0),
    ] = 20.0,
    header_timeout: Annotated[
        float,
        typer.Option(help="Seconds a client has to send a request's headers (0 = none).", min=0),
    ] = 10.0,
    keepalive_timeout: Annotated[
        float, typer.Option(help="Seconds an idle keep-alive connection stays open.", min=0)
    ] = 60.0,
    upload_timeout: Annotated[
        float,
        typer.Option(help="Seconds an upload may send nothing before it is dropped "
                     "(0 = none).", min=0),
    ] = 30.0,
    send_timeout: Annotated[
        float,
        typer.Option(help="Seconds a download may wait on a client that reads nothing "
                     "before it is aborted (0 = forever).", min=0),
    ] = 60.0,
    udp_tracker: Annotated[
        str | None,
        typer.Option(help="HOST:PORT where the tracker also speaks UDP (BEP 15); "
                     "torrents then list udp://PUBLIC-HOST:PORT/announce as a second tier."),
    ] = None,
    dht: Annotated[
        bool,
        typer.Option("--dht", help="The embedded seeder joins the Mainline DHT (on its "
                     "--peer-listen port, UDP) and announces public files there, so peers "
                     "find each other from a magnet link even with the hub down; never "
                     "private files. Bootstraps from the dht_bootstrap setting."),
    ] = False,
    dht_bootstrap: Annotated[
        str | None,
        typer.Option(help="DHT nodes HOST:PORT,... for the seeder (implies --dht)."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(help="Catalog: sqlite:PATH or postgresql://USER@HOST:PORT/DB (shared by "
                     "several hubs); default: SQLite in the data folder.",
                     envvar="SWARMHUB_DB"),
    ] = None,
    swarm_state: Annotated[
        str | None,
        typer.Option(help="Tracker swarms: 'memory' (this process) or redis://HOST:PORT/DB "
                     "(shared by several hubs).", envvar="SWARMHUB_SWARM_STATE"),
    ] = None,
    blobs: Annotated[
        Path | None,
        typer.Option(help="Blob folder shared by several hubs (each with its own --data on "
                     "the same file system); default: in the data folder."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Blobs in S3: s3://BUCKET/PREFIX?endpoint=URL (credentials from "
                     "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); the data folder caches.",
                     envvar="SWARMHUB_STORE"),
    ] = None,
    s3_redirect: Annotated[
        bool,
        typer.Option(help="With --store: redirect downloads of uncached blobs to a "
                     "presigned S3 URL instead of streaming them through the hub."),
    ] = False,
    s3_piece_cache: Annotated[
        int,
        typer.Option(help="With --store: MiB of pieces read from S3 the seeder keeps in "
                     "memory (least recently used go first).", min=0),
    ] = 64,
    workers: Annotated[
        int,
        typer.Option(help="Processes sharing the HTTP port (SO_REUSEPORT); the first runs "
                     "the seeder. More than 1 needs --swarm-state redis://...", min=1),
    ] = 1,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True)] = 0,
) -> None:
    """Run a hub: HTTP origin, tracker, catalog, accounts and an embedded seeder.

    Refuses to start if a port is taken; 'swarmhub hub token --new' makes an admin token.
    """
    if ctx.invoked_subcommand is not None:
        return
    from swarmhub.hub.api import HubConfig

    os.umask(_HUB_UMASK)
    from swarmhub.ui import setup_logging

    setup_logging(verbose)
    from swarmhub.hub.redact import install as redact_logs

    redact_logs()  # tokens and passkeys never reach the log, at any level
    host, port = _addr(listen, "--listen")
    peers = None if peer_listen.lower() == "off" else _addr(peer_listen, "--peer-listen")
    shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
    if ":" in shown:
        shown = f"[{shown}]"
    config = HubConfig(
        data_dir=data or default_data_dir(),
        public_url=public_url or f"http://{shown}:{port}",
        max_upload_size=max_upload * 1024 * 1024,
        max_transfers=max_transfers,
        upload_rate=float(upload_limit * 1024),
        tracker_interval=tracker_interval,
        tracker_min_interval=min(60, tracker_interval),
        peer_listen=peers,
        trust_proxy=trust_proxy,
        tracker_peers_per_ip=tracker_peers_per_ip,
        tracker_announce_rate=tracker_announce_rate,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        body_timeout=upload_timeout,
        send_timeout=send_timeout,
        udp_tracker=None if udp_tracker is None else _addr(udp_tracker, "--udp-tracker"),
        dht_bootstrap=_dht_bootstrap(dht, dht_bootstrap, peers),
        db=db,
        swarm_state=None if swarm_state == "memory" else swarm_state,
        blob_dir=blobs,
        store=store,
        s3_redirect=s3_redirect,
        s3_piece_cache=s3_piece_cache << 20,
    )
    try:
        if workers > 1:
            from swarmhub.hub.workers import run_workers

            code = run_workers(config, host, port, workers)
        else:
            code = _run(run_hub(config, host, port))
    except (OSError, SwarmhubError) as exc:
        _err.print(f"[bold red]error:[/] cannot start the hub: {escape(str(exc))}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@hub_app.command("token")
def hub_token(
    new: Annotated[bool, typer.Option("--new", help="Issue a new admin token.")] = False,
    data: Annotated[
        Path | None, typer.Option(help="The hub's data folder; default: XDG data dir.")
    ] = None,
    label: Annotated[str, typer.Option(help="Label shown in the token list.")] = "hub token --new",
    db: Annotated[
        str | None,
        typer.Option(help="The hub's catalog if not in the data folder (as for 'hub --db').",
                     envvar="SWARMHUB_DB"),
    ] = None,
) -> None:
    """Issue a new admin token, offline: the hub may be stopped (or running).

    Tokens are stored hashed, so a lost one cannot be shown again: revoke it afterwards.
    """
    from swarmhub.hub.backends import open_catalog, uses_embedded_catalog
    from swarmhub.hub.reconcile import CATALOG_NAME, prepare_data_dir

    if not new:
        _err.print("[bold red]error:[/] tokens are stored hashed and cannot be shown again; "
                   "pass --new to issue a new admin token")
        raise typer.Exit(2)
    data_dir = data or default_data_dir()
    if db is None and not (data_dir / CATALOG_NAME).is_file():
        _err.print(f"[bold red]error:[/] no hub catalog in {escape(str(data_dir))}; "
                   "check --data (a hub's first start creates it)")
        raise typer.Exit(1)
    os.umask(_HUB_UMASK)
    try:
        if uses_embedded_catalog(db):
            prepare_data_dir(data_dir)
        catalog = open_catalog(db, data_dir)
        try:
            secret, record = catalog.add_token("admin", label)
        finally:
            catalog.close()
    except (OSError, SwarmhubError, sqlite3.Error) as exc:
        _err.print(f"[bold red]error:[/] cannot issue a token in {escape(str(data_dir))}: "
                   f"{escape(str(exc))}")
        raise typer.Exit(1) from None
    _out.print(f"admin token: {secret}")
    _out.print(f"token id:    {record.id} (shown once: only its hash is stored)")


@hub_app.command("migrate")
def hub_migrate(
    source: Annotated[str, typer.Option("--from", help="Catalog to copy: sqlite:PATH or "
                                        "postgresql://...")],
    target: Annotated[str, typer.Option("--to", help="Catalog to copy into (created and "
                                        "migrated if new; must hold no other hub's data).")],
    from_blobs: Annotated[
        str | None, typer.Option(help="Blobs to copy: the old data folder, or s3://...")
    ] = None,
    to_blobs: Annotated[
        str | None, typer.Option(help="Where to copy the blobs: a folder, or s3://... "
                                 "(credentials from AWS_ACCESS_KEY_ID/...).")
    ] = None,
) -> None:
    """Copy a hub's catalog (and blobs) to other backends while it keeps serving.

    Idempotent: run it while the old hub serves, then once more after stopping it (new
    files, tokens, revocations and deletions are carried over; what was published on the
    target itself stays). Passkeys stay valid: the passkey secret is copied too.
    """
    import tempfile

    from swarmhub.hub.migrate import migrate

    if (from_blobs is None) != (to_blobs is None):
        _err.print("[bold red]error:[/] pass both --from-blobs and --to-blobs, or neither")
        raise typer.Exit(2)
    os.umask(_HUB_UMASK)
    try:
        with tempfile.TemporaryDirectory(prefix="swarmhub-migrate-") as work:
            report = migrate(source, target, work=Path(work), from_blobs=from_blobs,
                             to_blobs=to_blobs)
    except (OSError, SwarmhubError, sqlite3.Error) as exc:
        _err.print(f"[bold red]error:[/] migration failed: {escape(str(exc))}")
        raise typer.Exit(1) from None
    _out.print(report.summary())


# ------------------------------------------------------------------------------ publish


#: File bytes read (in a worker thread) and written per step of an upload.
_UPLOAD_CHUNK = 1 << 20


async def publish_file(
    path: Path, hub_url: str, token: str, *, collection: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """Stream ``path`` to a hub; returns the file's JSON (with its magnet link).

    Through swarmhub's own HTTP client (:mod:`swarmhub.discovery.httpget`, as ``get``
    and trackers): one connect for every client, TCP then TLS, which a cancel cannot
    leave with an unread handshake failure (uvloop's ``create_connection(ssl=...)`` can).
    """
    from swarmhub.discovery.httpget import HttpClient

    base = hub_url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "swarmhub-publish"}
    body, content_type = _form(path, collection, name or path.name)
    async with HttpClient(headers=headers, connect_timeout=30, read_timeout=300) as http:
        async with await http.post(f"{base}/api/files", body,
                                   {"Content-Type": content_type}) as r:
            entry = await _json(r)
        async with await http.get(f"{base}/api/files/{entry['id']}") as r:
            return await _json(r)


def _form(path: Path, collection: str | None, name: str) -> tuple[Upload, str]:
    """``multipart/form-data`` with the fields the hub reads (``collection``, ``name``,
    then ``file``), as an :class:`~swarmhub.discovery.httpget.Upload` whose file part is
    read as it is sent; and its Content-Type."""
    import secrets
    import urllib.parse

    from swarmhub.discovery.httpget import Upload

    boundary = f"swarmhub-{secrets.token_hex(16)}"
    fields = ([("collection", collection)] if collection else []) + [("name", name)]
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                    .encode() + value.encode() + b"\r\n" for key, value in fields)
    # the hub takes the published name from the 'name' field (exact bytes); the part's
    # filename is only a fallback, percent-encoded as aiohttp and browsers send it
    filename = urllib.parse.quote(path.name)
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield head
        loop = asyncio.get_running_loop()
        with open(path, "rb") as fh:
            left = size
            while left > 0:  # bounded: each step reads up to left bytes, or ends
                data = await loop.run_in_executor(None, fh.read, min(_UPLOAD_CHUNK, left))
                if not data:
                    break  # the file shrank: the length check refuses the request
                left -= len(data)
                yield data
        yield tail

    return Upload(len(head) + size + len(tail), chunks), \
        f"multipart/form-data; boundary={boundary}"


async def _json(response: Response) -> dict[str, Any]:
    try:
        body = await response.json()
    except ValueError:
        body = None
    if response.status >= 400 or not isinstance(body, dict):
        message = body.get("error") if isinstance(body, dict) else None
        raise RuntimeError(f"hub answered {response.status}: {message or response.reason}")
    return body


def publish(
    file: Annotated[Path, typer.Argument(help="File to publish.", exists=True, dir_okay=False)],
    hub_url: Annotated[str, typer.Option("--hub", help="The hub's URL.")],
    token: Annotated[
        str, typer.Option(help="Publisher token.", envvar="SWARMHUB_TOKEN", show_envvar=True)
    ],
    collection: Annotated[str | None, typer.Option(help="Collection to publish into.")] = None,
    name: Annotated[str | None, typer.Option(help="Published name (default: file name).")] = None,
) -> None:
    """Upload a file to a hub; print its HTTP URL, .torrent URL and magnet link."""
    # A hub that is down or a wrong URL (OSError, HttpError) is put in words by the CLI's
    # error boundary (swarmhub.ui); RuntimeError carries the hub's own refusal.
    try:
        info = _run_plain(publish_file(file, hub_url, token, collection=collection, name=name))
    except RuntimeError as exc:
        _err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _out.print(f"http:    {info['url']}")
    _out.print(f"torrent: {info['torrent_url']}")
    _out.print(f"v1:      {info['torrent_v1_url']}")
    _out.print(f"magnet:  {info.get('magnet', info['magnet_url'])}")


def _run_plain(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    return asyncio.run(coro)


def register(app: typer.Typer) -> None:
    """Add ``hub`` (with ``hub token``), ``publish`` and ``admin`` to the ``swarmhub`` command."""
    from swarmhub.hub.admin_cli import admin_app

    app.add_typer(hub_app, name="hub")
    app.command("publish")(publish)
    app.add_typer(admin_app, name="admin")
