"""What ``get`` and ``seed`` show while they run: a bar or a live line on a terminal, JSON
lines for programs, and a last line that says what happened.

One rule for every mode (cs, p2p, hybrid): a terminal gets a rich display on stderr;
``--json`` gets one JSON object per second on stdout (and nothing else on stdout); a pipe
without ``--json`` gets only the final line. Kept out of ``cli.py`` so the commands stay
short and another front end (a daemon) can reuse the formatting.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from swarmhub._records import value_methods
from swarmhub.ui import LazyConsole, real_console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.progress import Progress, TaskID

__all__ = [
    "DownloadView",
    "SeedView",
    "Sources",
    "emit_json",
    "fmt_bytes",
    "fmt_rate",
    "reachable_address",
]


def fmt_bytes(n: float) -> str:
    """``1.5 MB``: decimal units, as rich's bars show them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def fmt_rate(bps: float) -> str:
    return f"{fmt_bytes(bps)}/s"


def emit_json(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed (programs read it as it comes)."""
    print(json.dumps(obj), flush=True)


@value_methods
@dataclass(eq=False, repr=False)
class Sources:
    """Where a download's bytes came from, for the final line."""

    peers_bytes: int = 0
    webseed_bytes: int = 0
    http_bytes: int = 0
    already_had: int = 0
    max_peers: int = 0
    extra: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        if self.peers_bytes or self.max_peers:
            most = f" (up to {self.max_peers} at once)" if self.max_peers > 1 else ""
            parts.append(f"{fmt_bytes(self.peers_bytes)} from peers{most}")
        if self.webseed_bytes:
            parts.append(f"{fmt_bytes(self.webseed_bytes)} from the hub's web seed")
        if self.http_bytes:
            parts.append(f"{fmt_bytes(self.http_bytes)} over HTTP")
        if self.already_had:
            parts.append(f"{fmt_bytes(self.already_had)} already on disk")
        return "; ".join(parts + self.extra) or "nothing to fetch"


class DownloadView:
    """A download's display: a bar on a terminal (stderr), JSON lines with ``--json``."""

    def __init__(self, name: str, total: int, *, json_lines: bool,
                 console: Console | LazyConsole | None = None) -> None:
        # rich is imported only for a bar: --json prints no rich output until the last line
        self.console = console if console is not None else LazyConsole(stderr=True)
        self.json_lines = json_lines
        self.name = name
        self.total = total
        self.start = time.monotonic()
        self.max_peers = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if not json_lines and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"), console=real_console(self.console),
                transient=True)

    def __enter__(self) -> DownloadView:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.name, total=self.total, detail="")
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()  # transient: the final line replaces the bar

    def update(self, have: int, *, peers: int | None = None,
               fields: dict[str, Any] | None = None) -> None:
        """Show ``have`` bytes of ``total``; ``fields`` go into the JSON line as they are."""
        if peers is not None:
            self.max_peers = max(self.max_peers, peers)
        if self._progress is not None and self._task is not None:
            detail = "HTTP" if peers is None else f"{peers} peer{'' if peers == 1 else 's'}"
            self._progress.update(self._task, completed=have, detail=detail)
        if self.json_lines and fields is not None:
            emit_json({"t": round(time.monotonic() - self.start, 2), **fields})

    def finished(self, what: str, size: int, sources: Sources, *,
                 json_fields: dict[str, Any] | None = None) -> float:
        """The last line: size, time, average rate and sources; returns the elapsed time."""
        elapsed = time.monotonic() - self.start
        fetched = sources.peers_bytes + sources.webseed_bytes + sources.http_bytes
        rate = fetched / elapsed if elapsed > 0 else 0.0
        line = (f"{what} ({fmt_bytes(size)}) in {elapsed:.1f} s, average {fmt_rate(rate)}; "
                f"{sources.describe()}")
        if self.json_lines:
            emit_json({"event": "finished", "elapsed": round(elapsed, 3), **(json_fields or {})})
            # plain, for a person beside the program: a --json get never imports rich
            # (~30 ms of CPU as each lab peer finished, in the other peers' timed run)
            print(f"complete: {line}", file=sys.stderr, flush=True)
        else:
            self.console.print(f"[green]complete:[/] {line}", soft_wrap=True, highlight=False)
        return elapsed


class SeedView:
    """A seeder's status: one live line on a terminal, JSON lines for programs."""

    def __init__(self, name: str, size: int, *, json_lines: bool,
                 console: Console | LazyConsole | None = None) -> None:
        self.console = console if console is not None else LazyConsole(stderr=True)
        self.name = name
        self.size = size
        self.json_lines = json_lines or not sys.stdout.isatty()
        self._live: Live | None = None
        if not json_lines and self.console.is_terminal:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(""), console=real_console(self.console), transient=True,
                              auto_refresh=False)
        self.start = time.monotonic()

    def __enter__(self) -> SeedView:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, *, peers: int, upload_rate: float, uploaded: int, pieces: int,
               num_pieces: int) -> None:
        ratio = uploaded / self.size if self.size else 0.0
        if self._live is not None:
            from rich.text import Text

            have = "" if pieces == num_pieces else f" ({pieces}/{num_pieces} pieces)"
            self._live.update(Text(
                f"seeding {self.name}{have}: {peers} peer{'' if peers == 1 else 's'}, "
                f"up {fmt_rate(upload_rate)}, "
                f"uploaded {fmt_bytes(uploaded)}, ratio {ratio:.2f}"), refresh=True)
        if self.json_lines:
            emit_json({"event": "status", "t": round(time.monotonic() - self.start, 2),
                       "peers": peers, "rate_up": int(upload_rate), "uploaded": uploaded,
                       "ratio": round(ratio, 3), "pieces": pieces})


def reachable_address(host: str) -> str:
    """An address other machines (or local processes) can dial for a socket bound to
    ``host``: ``host`` itself, or for a wildcard the address of the interface that holds
    the default route (a UDP ``connect`` only picks a route: no packet is sent), else
    loopback."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"  # documentation nets
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            addr = str(s.getsockname()[0])
    except OSError:
        addr = ""
    if not addr or addr in ("0.0.0.0", "::"):
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return addr
