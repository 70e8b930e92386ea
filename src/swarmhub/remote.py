"""``swarmhub remote ...``: drive a running ``swarmhub daemon`` through its JSON API.

Where the daemon is: ``--daemon URL`` (``SWARMHUB_DAEMON``, or ``daemon`` in the config
file; default ``http://127.0.0.1:9091``). The token: ``--token`` (``SWARMHUB_DAEMON_TOKEN``
or ``daemon_token``), else the ``api.token`` file of the local daemon's state folder
(``--state``), so on the daemon's own machine no token needs typing. A torrent is named by
its id (the info hash) or any unique start of it. Errors are one line, exit status 1.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from swarmhub.errors import SwarmhubError
from swarmhub.ui import print_answer

__all__ = ["DaemonClient", "remote_app"]

remote_app = typer.Typer(
    help="Talk to a running 'swarmhub daemon': add, list, pause, resume, remove, limits, "
    "files, events.", no_args_is_help=True, add_completion=False)

DaemonUrl = Annotated[str, typer.Option(
    "--daemon", help="The daemon's API URL.", envvar="SWARMHUB_DAEMON", show_envvar=True)]
Token = Annotated[str | None, typer.Option(
    "--token", help="API token (default: STATE/api.token of the local daemon).",
    envvar="SWARMHUB_DAEMON_TOKEN", show_envvar=True)]
State = Annotated[Path | None, typer.Option(
    "--state", help="The local daemon's state folder, to read its token from.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the daemon's JSON answer.")]
DEFAULT_URL = "http://127.0.0.1:9091"


class DaemonClient:
    """Blocking JSON calls to one daemon (no proxies: the daemon is usually on loopback)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        return req

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            with self._opener.open(self._request(method, path, body),
                                   timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise SwarmhubError(f"the daemon answered {exc.code}: {_error_text(exc)}") from None
        except urllib.error.URLError as exc:
            raise SwarmhubError(f"cannot reach the daemon at {self.base}: {exc.reason}; is "
                                "'swarmhub daemon' running (--daemon URL)?") from None

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(kind, data) for each Server-Sent Event, until the stream ends."""
        try:
            resp = self._opener.open(self._request("GET", "/api/events"), timeout=None)
        except urllib.error.HTTPError as exc:
            raise SwarmhubError(f"the daemon answered {exc.code}: {_error_text(exc)}") from None
        except urllib.error.URLError as exc:
            raise SwarmhubError(f"cannot reach the daemon at {self.base}: {exc.reason}") from None
        with resp:
            kind, data = "message", ""
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        yield kind, json.loads(data)
                    kind, data = "message", ""
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()

    def resolve(self, tid: str) -> str:
        """A full id from a unique start of one."""
        ids = [t["id"] for t in self.call("GET", "/api/torrents")["torrents"]]
        found = [i for i in ids if i.startswith(tid.lower())]
        if len(found) == 1:
            return str(found[0])
        if not found:
            raise SwarmhubError(f"no torrent {tid!r} in the daemon ('swarmhub remote list')")
        raise SwarmhubError(f"{tid!r} matches {len(found)} torrents; give more of the id")


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (OSError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return str(exc.reason)


def _client(url: str, token: str | None, state: Path | None) -> DaemonClient:
    if not token:
        from swarmhub.daemon.commands import default_state

        path = (state or default_state()) / "api.token"
        try:
            token = path.read_text().strip()
        except OSError:
            raise SwarmhubError(f"no token: give --token (or SWARMHUB_DAEMON_TOKEN), or "
                                f"--state DIR of the daemon ({path} is not readable)") from None
    return DaemonClient(url, token)


def _url(url: str | None) -> str:
    return url or os.environ.get("SWARMHUB_DAEMON") or DEFAULT_URL




def _rate(n: float) -> str:
    return f"{n / 1024:.0f} KiB/s"


def _line(t: dict[str, Any]) -> str:
    return (f"{t['id'][:12]}  {t['state']:<11} {t['progress']:>6.1%}  "
            f"down {_rate(t['download_rate'])}  up {_rate(t['upload_rate'])}  "
            f"{t['peers']} peers  {t['name'] or '(metadata pending)'}"
            + (f"  error: {t['error']}" if t["error"] else ""))


@remote_app.command("add")
def add(
    source: Annotated[str, typer.Argument(
        help="A .torrent file, a magnet link or a hub file URL (http://HUB/f/<id>).")],
    daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
    save_path: Annotated[str | None, typer.Option(
        help="Folder on the daemon's machine (default: its --download-dir).")] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Add without starting.")] = False,
    peer: Annotated[list[str] | None, typer.Option(help="Also connect to HOST:PORT.")] = None,
    tracker: Annotated[list[str] | None, typer.Option(help="Use this tracker URL.")] = None,
    hub_token: Annotated[str | None, typer.Option(
        help="Hub token for a private hub file.")] = None,
    as_json: AsJson = False,
) -> None:
    """Add a torrent to the daemon."""
    body: dict[str, Any] = {"paused": paused, "peers": peer or [], "trackers": tracker or []}
    if save_path:
        body["save_path"] = save_path
    if hub_token:
        body["hub_token"] = hub_token
    if source.startswith(("magnet:", "http://", "https://")):
        body["source"] = source
    else:
        path = Path(source)
        try:
            body["torrent"] = base64.b64encode(path.read_bytes()).decode()
        except OSError as exc:
            raise SwarmhubError(f"cannot read {path}: {exc.strerror}") from None
        body["filename"] = path.name
    t = _client(_url(daemon), token, state).call("POST", "/api/torrents", body)
    name = t["name"] or "(fetching metadata)"
    print_answer(t, as_json, [f"added {t['id']}  {name}  ({t['state']})"])


@remote_app.command("list")
def list_(daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
          as_json: AsJson = False) -> None:
    """One line per torrent: id, state, progress, rates, peers, name."""
    answer = _client(_url(daemon), token, state).call("GET", "/api/torrents")
    print_answer(answer, as_json, [_line(t) for t in answer["torrents"]] or ["(no torrents)"])


def _simple(action: str, tid: str, daemon: str, token: str | None, state: Path | None,
            as_json: bool) -> None:
    client = _client(_url(daemon), token, state)
    t = client.call("POST", f"/api/torrents/{client.resolve(tid)}/{action}")
    print_answer(t, as_json, [_line(t)])


@remote_app.command("pause")
def pause(tid: Annotated[str, typer.Argument(help="Torrent id (or a unique start).")],
          daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
          as_json: AsJson = False) -> None:
    """Pause a torrent (peers closed, verified pieces kept)."""
    _simple("pause", tid, daemon, token, state, as_json)


@remote_app.command("resume")
def resume(tid: Annotated[str, typer.Argument(help="Torrent id (or a unique start).")],
           daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
           as_json: AsJson = False) -> None:
    """Resume a paused torrent (or retry one in error); it may wait in the queue."""
    _simple("resume", tid, daemon, token, state, as_json)


@remote_app.command("remove")
def remove(tid: Annotated[str, typer.Argument(help="Torrent id (or a unique start).")],
           daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
           delete_data: Annotated[bool, typer.Option(
               "--delete-data", help="Also delete the downloaded files.")] = False,
           as_json: AsJson = False) -> None:
    """Remove a torrent from the daemon (its files stay unless --delete-data)."""
    client = _client(_url(daemon), token, state)
    full = client.resolve(tid)
    answer = client.call("DELETE", f"/api/torrents/{full}?delete_data="
                         f"{'true' if delete_data else 'false'}")
    print_answer(answer, as_json, [f"removed {full}" + (" and its data" if delete_data else "")])


@remote_app.command("limits")
def limits(
    tid: Annotated[str | None, typer.Argument(
        help="Torrent id; without it, the daemon's global limits.")] = None,
    download: Annotated[int | None, typer.Option(help="KiB/s, 0 = unlimited.", min=0)] = None,
    upload: Annotated[int | None, typer.Option(help="KiB/s, 0 = unlimited.", min=0)] = None,
    daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
    as_json: AsJson = False,
) -> None:
    """Show or set rate limits, global or for one torrent."""
    client = _client(_url(daemon), token, state)
    body = {k: v * 1024 for k, v in (("download_limit", download), ("upload_limit", upload))
            if v is not None}
    if tid is None:
        answer = client.call("PUT", "/api/limits", body) if body else \
            client.call("GET", "/api/session")
        what = "global"
    else:
        full = client.resolve(tid)
        answer = client.call("PUT", f"/api/torrents/{full}/limits", body) if body else \
            client.call("GET", f"/api/torrents/{full}")
        what = full[:12]

    def show(n: int) -> str:
        return f"{n // 1024} KiB/s" if n else "unlimited"

    print_answer(answer, as_json, [f"{what}: download {show(answer['download_limit'])}, "
                            f"upload {show(answer['upload_limit'])}"])


@remote_app.command("files")
def files(
    tid: Annotated[str, typer.Argument(help="Torrent id (or a unique start).")],
    priority: Annotated[list[str] | None, typer.Option(
        help="INDEX=P: set file INDEX (as listed) to P: 0 skip, 1 normal .. 7 sooner "
        "(repeat; other files keep theirs).")] = None,
    daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
    as_json: AsJson = False,
) -> None:
    """List a torrent's files with their priorities, or change some."""
    client = _client(_url(daemon), token, state)
    full = client.resolve(tid)
    answer = client.call("GET", f"/api/torrents/{full}/files")
    if priority:
        prios = [f["priority"] for f in answer["files"]]
        for item in priority:
            index, sep, value = item.partition("=")
            if not sep or not index.isdigit() or not value.isdigit() \
                    or int(index) >= len(prios):
                raise SwarmhubError(f"--priority wants INDEX=P with INDEX below {len(prios)}, "
                                    f"not {item!r}")
            prios[int(index)] = int(value)
        answer = client.call("PUT", f"/api/torrents/{full}/files", {"priorities": prios})
    print_answer(answer, as_json, [
        f"{f['index']:>4}  {f['priority']}  {f['size']:>14,}  {f['path']}"
        for f in answer["files"]])


@remote_app.command("events")
def events(
    daemon: DaemonUrl = DEFAULT_URL, token: Token = None, state: State = None,
    until: Annotated[str | None, typer.Option(
        help="Exit after the first event of this kind (e.g. completed).")] = None,
    stats: Annotated[bool, typer.Option(help="Also show the periodic stats events.")] = False,
    as_json: AsJson = False,
) -> None:
    """Follow the daemon's events (added, started, completed, paused, resumed, error,
    removed, stats) until Ctrl-C (or --until KIND)."""
    client = _client(_url(daemon), token, state)
    for kind, data in client.events():
        if kind == "stats" and not stats and until != "stats":
            continue
        if as_json:
            typer.echo(json.dumps({"event": kind, **data}), nl=True)
        else:
            who = data.get("name") or data.get("id", "")
            extra = f": {data['error']}" if data.get("error") else ""
            typer.echo(f"{kind}\t{data.get('id', '')[:12]}\t{who}{extra}"
                       if kind != "stats" else
                       f"stats\t{data['running']} running, {data['queued']} queued, "
                       f"down {_rate(data['download_rate'])}, up {_rate(data['upload_rate'])}")
        if until is not None and kind == until:
            return
    raise SwarmhubError("the daemon ended the event stream (was it stopped?)")
