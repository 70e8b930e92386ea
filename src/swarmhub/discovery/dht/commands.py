"""``swarmhub dht status``: what the DHT node of a running (or the last) get/seed knows.

It reads the node's state file (``<state dir>/dht.json``), which the node rewrites every
15 seconds and on exit, and says how old it is and whether the process that wrote it is
still alive: a snapshot, not a live query, and the output says so. A second get/seed
sharing the state folder runs its node under a fresh id with ``dht-<pid>.json`` (removed
when it exits); those are shown too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from swarmhub.procs import pid_alive

__all__ = ["register", "state_file"]


def state_file(state_dir: Path) -> Path:
    return state_dir / "dht.json"


def register(app: typer.Typer) -> None:
    dht = typer.Typer(help="The Mainline DHT node of get/seed (BEP 5).", no_args_is_help=True)

    @dht.command("status")
    def status(
        state_dir: Annotated[Path | None, typer.Option(
            help="State folder (default: SWARMHUB_STATE_DIR or the XDG state folder).")]
        = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the raw state.")] = False,
    ) -> None:
        """Node id, routing table per bucket, lookups and traffic of the DHT node."""
        from swarmhub.engine.session import default_state_dir

        path = state_file(state_dir or default_state_dir())
        out, err = Console(), Console(stderr=True)
        found = []
        for p in [path, *sorted(path.parent.glob(f"{path.stem}-*.json"))]:
            try:
                found.append((p, json.loads(p.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue
        if not found:
            err.print(f"[bold red]error:[/] no DHT state at {path}; start "
                      "`swarmhub get` or `swarmhub seed` (without --no-dht) first")
            raise typer.Exit(1)
        if as_json:
            print(json.dumps(found[0][1], indent=1))
            return
        for p, data in found:
            if len(found) > 1:
                out.print(f"[bold]{p}[/]")
            _show(out, data)

    app.add_typer(dht, name="dht")


def _show(out: Console, data: Any) -> None:
    """One node's snapshot as two tables: the summary, then the buckets."""
    age = time.time() - float(data.get("saved_at", 0))
    running = pid_alive(data.get("pid"))
    t = Table(show_header=False, box=None)
    t.add_row("node id", str(data.get("node_id")))
    t.add_row("address", f"{data.get('address')} (UDP)")
    t.add_row("external ip", str(data.get("external_ip") or "not known yet"))
    t.add_row("process", f"{data.get('pid')} "
              f"{'running' if running else 'not running'}; snapshot {age:.0f} s old")
    nodes = sum(b[1] for b in data.get("buckets", []))
    t.add_row("routing table", f"{nodes} nodes in {len(data.get('buckets', []))} buckets")
    t.add_row("peers stored", f"{data.get('peers_stored', 0)} for "
              f"{data.get('torrents_stored', 0)} torrents")
    lk = data.get("lookups", {})
    t.add_row("lookups", f"{lk.get('started', 0)} started, {lk.get('done', 0)} done, "
              f"median {lk.get('median_ms')} ms")
    tr = data.get("traffic", {})
    t.add_row("traffic", f"in {tr.get('packets_in', 0)} packets / "
              f"{tr.get('bytes_in', 0):,} B, out {tr.get('packets_out', 0)} packets / "
              f"{tr.get('bytes_out', 0):,} B")
    t.add_row("queries in", ", ".join(f"{k} {v}" for k, v in
                                      sorted(tr.get("queries_in", {}).items())) or "none")
    t.add_row("dropped", f"malformed {tr.get('malformed', 0)}, rate-limited "
              f"{tr.get('rate_limited', 0)}, unsolicited {tr.get('unsolicited', 0)}, "
              f"bad tokens {tr.get('bad_tokens', 0)}, timeouts {tr.get('timeouts', 0)}")
    out.print(t)
    b = Table("bucket (prefix bits)", "nodes", "replacements")
    for prefix, n, r in data.get("buckets", []):
        b.add_row(str(prefix), str(n), str(r))
    out.print(b)
