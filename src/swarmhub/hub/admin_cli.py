"""``swarmhub admin ...``: what the admin page does, from a shell, through the hub's HTTP API.

Why the API and not the catalog file: the hub may run on another machine, and going
through the API keeps one set of rules (roles, validation, the seeder told about a
deleted file) for the page, the CLI and scripts. Each command is one request with
``--hub URL --token T`` (or ``SWARMHUB_HUB`` / ``SWARMHUB_TOKEN``); ``--json`` prints the
hub's answer as it is, for scripts. Errors are one line and exit status 1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from swarmhub.ui import print_answer

__all__ = ["AdminClient", "AdminError", "admin_app"]

_err = Console(stderr=True, soft_wrap=True)

admin_app = typer.Typer(
    help="Manage a hub over its HTTP API: collections, tokens, files (as the admin page).",
    no_args_is_help=True,
    add_completion=False,
)
collections_app = typer.Typer(help="List, create and delete collections.", no_args_is_help=True)
tokens_app = typer.Typer(help="List, create and revoke tokens.", no_args_is_help=True)
files_app = typer.Typer(help="List and delete published files.", no_args_is_help=True)
admin_app.add_typer(collections_app, name="collections")
admin_app.add_typer(tokens_app, name="tokens")
admin_app.add_typer(files_app, name="files")

HubUrl = Annotated[
    str, typer.Option("--hub", help="The hub's URL.", envvar="SWARMHUB_HUB", show_envvar=True)
]
Token = Annotated[
    str,
    typer.Option("--token", help="An admin token.", envvar="SWARMHUB_TOKEN", show_envvar=True),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the hub's JSON answer.")]


class AdminError(Exception):
    """A request the hub refused or could not get; the message is the one line shown."""


class AdminClient:
    """Blocking JSON calls to one hub with one bearer token (no proxies: a hub is direct)."""

    def __init__(self, hub_url: str, token: str, timeout: float = 30.0) -> None:
        self.base = hub_url.rstrip("/") + "/api/"
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(f"hub answered {exc.code}: {_error_text(exc)}") from None
        except urllib.error.URLError as exc:
            raise AdminError(f"cannot reach the hub at {self.base[:-5]}: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise AdminError(f"bad answer from the hub at {self.base[:-5]}: {exc}") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (OSError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return str(exc.reason)


def _call(hub: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return AdminClient(hub, token).call(method, path, body)
    except AdminError as exc:
        _err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None




def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# ------------------------------------------------------------------------------ collections


@collections_app.command("list")
def collections_list(hub: HubUrl, token: Token, as_json: AsJson = False) -> None:
    """One line per collection: name, public/private, files."""
    answer = _call(hub, token, "GET", "collections")
    items = answer["collections"]
    lines = [
        f"{c['name']}\t{'private' if c['private'] else 'public'}\t{c['files']} file(s)"
        for c in items
    ] or ["(no collections)"]
    print_answer(answer, as_json, lines)


@collections_app.command("create")
def collections_create(
    name: Annotated[str, typer.Argument(help="Collection name.")],
    hub: HubUrl,
    token: Token,
    private: Annotated[bool, typer.Option(help="Only token holders see its files.")] = False,
    as_json: AsJson = False,
) -> None:
    """Create a collection (``--private``: its files need a token)."""
    c = _call(hub, token, "POST", "collections", {"name": name, "private": private})
    kind = "private" if c["private"] else "public"
    print_answer(c, as_json, [f"created {kind} collection {c['name']}"])


@collections_app.command("delete")
def collections_delete(
    name: Annotated[str, typer.Argument(help="Collection name.")],
    hub: HubUrl,
    token: Token,
    as_json: AsJson = False,
) -> None:
    """Delete an empty collection."""
    answer = _call(hub, token, "DELETE", f"collections/{_q(name)}")
    print_answer(answer, as_json, [f"deleted collection {name}"])


# ------------------------------------------------------------------------------ tokens


@tokens_app.command("list")
def tokens_list(hub: HubUrl, token: Token, as_json: AsJson = False) -> None:
    """One line per token: id, role, active/revoked, label (secrets are never shown again)."""
    answer = _call(hub, token, "GET", "tokens")
    lines = [
        f"{t['id']}\t{t['role']}\t{'revoked' if t['revoked_at'] else 'active'}\t{t['label']}"
        for t in answer["tokens"]
    ] or ["(no tokens)"]
    print_answer(answer, as_json, lines)


@tokens_app.command("create")
def tokens_create(
    hub: HubUrl,
    token: Token,
    role: Annotated[str, typer.Option(help="reader, publisher or admin.")] = "reader",
    label: Annotated[str, typer.Option(help="Who or what the token is for.")] = "",
    as_json: AsJson = False,
) -> None:
    """Create a token and print its secret (shown this once: only its hash is stored)."""
    t = _call(hub, token, "POST", "tokens", {"role": role, "label": label})
    print_answer(t, as_json, [f"token: {t['token']}", f"id:    {t['id']} ({t['role']})"])


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from 'tokens list').")],
    hub: HubUrl,
    token: Token,
    as_json: AsJson = False,
) -> None:
    """Revoke a token: its next request is refused."""
    t = _call(hub, token, "POST", f"tokens/{_q(token_id)}/revoke")
    print_answer(t, as_json, [f"revoked {t['id']} ({t['role']}, {t['label'] or 'no label'})"])


# ------------------------------------------------------------------------------ files


@files_app.command("list")
def files_list(
    hub: HubUrl,
    token: Token,
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Name contains.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: AsJson = False,
) -> None:
    """One line per file: id, size, collection, name (newest first)."""
    params = {"limit": str(limit)}
    if collection:
        params["collection"] = collection
    if query:
        params["q"] = query
    answer = _call(hub, token, "GET", "files?" + urllib.parse.urlencode(params))
    lines = [
        f"{f['id']}\t{f['size']}\t{f['collection'] or '-'}\t{f['name']}" for f in answer["files"]
    ] or ["(no files)"]
    if answer["total"] > len(answer["files"]):
        lines.append(f"({answer['total']} in all; raise --limit to see more)")
    print_answer(answer, as_json, lines)


@files_app.command("delete")
def files_delete(
    file_id: Annotated[str, typer.Argument(help="The file's id.")],
    hub: HubUrl,
    token: Token,
    as_json: AsJson = False,
) -> None:
    """Delete a published file (its bytes go when no other file shares them)."""
    answer = _call(hub, token, "DELETE", f"files/{_q(file_id)}")
    print_answer(answer, as_json, [f"deleted file {file_id}"])


@admin_app.command("stats")
def stats(hub: HubUrl, token: Token, as_json: AsJson = False) -> None:
    """Catalog totals: files, bytes, blobs, collections, active tokens."""
    answer = _call(hub, token, "GET", "stats")
    print_answer(answer, as_json, [f"{k}: {v}" for k, v in answer.items()])
