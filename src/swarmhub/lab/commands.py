"""``swarmhub lab run`` and ``swarmhub lab sweep``: the lab from the command line.

Why a sub-app: the lab has its own vocabulary (modes, N, rates with units) and its own
output folder; ``register(app)`` lets the main CLI mount it without knowing its options.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from swarmhub.lab.bounds import parse_duration, parse_rate, parse_size
from swarmhub.lab.faults import parse_fault
from swarmhub.lab.latency import latency_support
from swarmhub.lab.report import (
    give_report_to_home_owner,
    report_home,
    require_plotting,
    results_table,
    write_report,
)
from swarmhub.lab.scenario import MODES, ScenarioResult, run_scenario
from swarmhub.lab.topology import LabError, netns_available

__all__ = ["lab_app", "register"]

log = logging.getLogger(__name__)

lab_app = typer.Typer(
    help="Compare client-server and peer-to-peer on emulated hosts (network namespaces with "
    "htb shaping; loopback with application-level limits without root).",
    no_args_is_help=True,
)
console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Mount the ``lab`` commands on the main ``swarmhub`` app."""
    app.add_typer(lab_app, name="lab")


def _parse(kind: str, text: str, fn: Any) -> Any:
    try:
        return fn(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=kind) from None


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise typer.BadParameter(
            f"modes are {', '.join(MODES)}; got {text!r}", param_hint="--modes"
        )
    return modes


def _peers(text: str) -> list[int]:
    try:
        ns = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ns = []
    if not ns or min(ns) < 1:
        raise typer.BadParameter(
            f"expected N or N1,N2,... (>= 1), got {text!r}", param_hint="--peers"
        )
    return ns


class _Live:
    """A live progress display: one bar per scenario, advanced by the scenario's events."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.host_progress: dict[int, float] = {}
        self.done = 0

    def start(self, label: str, hosts: int) -> None:
        self.host_progress = {}
        self.done = 0
        self.task = self.progress.add_task(label, total=hosts, done=f"0/{hosts}")

    def __call__(self, event: dict[str, Any]) -> None:
        if self.task is None:
            return
        kind = event.get("event")
        host = event.get("host")
        if kind == "progress" and isinstance(host, int):
            self.host_progress[host] = float(event.get("progress", 0))
        elif kind in ("finished", "failed") and isinstance(host, int):
            self.host_progress[host] = 1.0
            self.done += 1
        total = self.progress.tasks[self.task].total or 1
        self.progress.update(
            self.task, completed=sum(self.host_progress.values()), done=f"{self.done}/{int(total)}"
        )


def _run_all(
    ns: list[int],
    modes: list[str],
    size: str,
    up: str,
    down: str,
    source_up: str | None,
    latency: str,
    client: str,
    fault: str | None,
    out: Path,
    prefix: str | None,
    loopback: bool,
    timeout: float | None,
    dht: bool = False,
    late: int = 0,
    piece_size: str | None = None,
) -> list[ScenarioResult]:
    require_plotting()
    size_b = _parse("--size", size, parse_size)
    piece_length = _parse("--piece-size", piece_size, parse_size) if piece_size else None
    up_bps = _parse("--up", up, parse_rate)
    down_bps = _parse("--down", down, parse_rate)
    src_bps = _parse("--source-up", source_up, parse_rate) if source_up else up_bps
    latency_ms = _parse("--latency", latency, parse_duration) * 1000 if latency else 0.0
    if fault:
        _parse("--fault", fault, parse_fault)
    if latency_ms > 0:  # refused up front, in one line, never silently dropped
        ok, why = (False, "") if loopback else latency_support()
        if not ok:
            console.print(
                f"[red]error:[/] {why or '--latency needs the namespace lab, not --loopback'}",
                soft_wrap=True,
            )
            raise typer.Exit(2)
    use_netns = False if loopback else None
    if not loopback and not netns_available()[0]:
        console.print(
            f"[yellow]loopback mode:[/] {netns_available()[1]}; rates become "
            "application-level limits"
        )
    results: list[ScenarioResult] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]} hosts"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        live = _Live(progress)
        for n in ns:
            for mode in modes:
                live.start(f"{mode} N={n}", n)
                try:
                    res = run_scenario(
                        mode,
                        n,
                        size_b,
                        up_bps,
                        down_bps,
                        src_bps,
                        latency_ms,
                        client,
                        fault,
                        out / "work" / f"{mode}-n{n}",
                        live,
                        prefix=prefix,
                        use_netns=use_netns,
                        timeout=timeout,
                        dht=dht,
                        late=late,
                        piece_length=piece_length,
                    )
                except LabError as exc:
                    progress.console.print(f"[yellow]{mode} N={n}: skipped:[/] {exc}")
                    continue
                results.append(res)
    return results


def _finish(results: list[ScenarioResult], out: Path, keep: bool, home: Path) -> None:
    """Print the table and write the report into ``out``; it gets the owner of ``home``
    (:func:`~swarmhub.lab.report.report_home`, taken before the run)."""
    try:
        _report(results, out, keep)
    finally:
        give_report_to_home_owner(out, home)


def _report(results: list[ScenarioResult], out: Path, keep: bool) -> None:
    if not results:
        console.print("[red]no scenario ran[/]")
        raise typer.Exit(1)
    term = Console()
    if not term.is_terminal:
        term = Console(width=220)  # piped output: keep one row per scenario
    term.print(results_table(results))
    command = "swarmhub " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = write_report(results, out, command)
    if not keep:
        import shutil

        shutil.rmtree(out / "work", ignore_errors=True)
    console.print(f"report: {report}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


_Size = Annotated[str, typer.Option(help="File size, e.g. 64MiB, 4MB.")]
_Up = Annotated[str, typer.Option(help="Each peer's upload, e.g. 20mbit.")]
_Down = Annotated[str, typer.Option(help="Each host's download, e.g. 100mbit.")]
_SourceUp = Annotated[str | None, typer.Option(help="The source's upload (default: same as --up).")]
_Latency = Annotated[
    str,
    typer.Option(
        help="One-way link latency, e.g. 10ms (RTT 20 ms, checked before each run); refused "
        "where the lab cannot delay packets (no root, iptables or libnetfilter-queue)."
    ),
]
_Modes = Annotated[str, typer.Option(help="Comma-separated: cs, p2p, hybrid.")]
_Client = Annotated[
    str,
    typer.Option(
        help="Client: swarmhub (every mode), libtorrent (p2p: the reference swarm), curl (cs)."
    ),
]
_Fault = Annotated[
    str | None,
    typer.Option(
        help="Inject a fault when the swarm reaches a state: kill-hub@full-copy (the peers "
        "together hold every piece), kill-hub@50% (bytes delivered), kill-peers=25%@30%."
    ),
]
_Out = Annotated[Path, typer.Option(help="Folder for report.html, PNGs and results.json.")]
_Prefix = Annotated[str | None, typer.Option(
    help="Namespace name prefix; its leftovers are removed at start. Default: one per run "
    "(shrun<PID>), so labs started at once never touch each other's namespaces.")]
_Loopback = Annotated[bool, typer.Option(help="Force loopback mode even as root.")]
_Keep = Annotated[bool, typer.Option(help="Keep the downloaded data and logs under OUT/work.")]
_Timeout = Annotated[
    float | None, typer.Option(help="Per-scenario deadline in s (default 5 x bound + 30).")
]


@lab_app.command("run")
def run(
    peers: Annotated[int, typer.Option(help="Receiving hosts N.")] = 8,
    size: _Size = "64MiB",
    up: _Up = "20mbit",
    down: _Down = "100mbit",
    source_up: _SourceUp = None,
    latency: _Latency = "0ms",
    modes: _Modes = "cs,p2p,hybrid",
    client: _Client = "swarmhub",
    fault: _Fault = None,
    out: _Out = Path("lab-report"),
    prefix: _Prefix = None,
    loopback: _Loopback = False,
    keep: _Keep = False,
    timeout: _Timeout = None,
    dht: Annotated[bool, typer.Option(
        "--dht", help="Peers also find each other on a DHT of the lab's hosts; p2p then runs "
        "with no tracker, from a magnet link (namespace lab only).")] = False,
    late: Annotated[int, typer.Option(
        help="With --dht and a kill-hub fault: this many more hosts start once the hub "
        "died, from a magnet link, and must still find the swarm.")] = 0,
    piece_size: Annotated[str | None, typer.Option(
        help="p2p only: the torrent's piece length (default: what `swarmhub create` picks "
        "for --size, 32 KiB for 32 MiB); `lab simulate --piece-size` compares like with "
        "like.")] = None,
) -> None:
    """Run each mode once with N receiving hosts; print a table and write OUT/report.html."""
    if peers < 1:
        raise typer.BadParameter("need at least one peer", param_hint="--peers")
    home = report_home(out)  # before the run creates out/work
    results = _run_all(
        [peers],
        _modes(modes),
        size,
        up,
        down,
        source_up,
        latency,
        client,
        fault,
        out,
        prefix,
        loopback,
        timeout,
        dht=dht,
        late=late,
        piece_size=piece_size,
    )
    _finish(results, out, keep, home)


@lab_app.command("sweep")
def sweep(
    peers: Annotated[str, typer.Option(help="Values of N, e.g. 2,4,8,16.")] = "2,4,8",
    size: _Size = "64MiB",
    up: _Up = "20mbit",
    down: _Down = "100mbit",
    source_up: _SourceUp = None,
    latency: _Latency = "0ms",
    modes: _Modes = "cs,p2p,hybrid",
    client: _Client = "swarmhub",
    fault: _Fault = None,
    out: _Out = Path("lab-report"),
    prefix: _Prefix = None,
    loopback: _Loopback = False,
    keep: _Keep = False,
    timeout: _Timeout = None,
) -> None:
    """Completion time vs N per mode, against the bounds; plots in OUT/report.html."""
    home = report_home(out)  # before the run creates out/work
    results = _run_all(
        _peers(peers),
        _modes(modes),
        size,
        up,
        down,
        source_up,
        latency,
        client,
        fault,
        out,
        prefix,
        loopback,
        timeout,
    )
    _finish(results, out, keep, home)


_Classes = "RATE or RATE:SHARE%,RATE:SHARE%... (heterogeneous hosts)"


def _classes(option: str, text: str) -> list[tuple[float, float]]:
    from swarmhub.lab.simhosts import parse_classes

    result: list[tuple[float, float]] = _parse(option, text, parse_classes)
    return result


@lab_app.command("simulate")
def simulate_cmd(
    peers: Annotated[
        str, typer.Option(help="Receiving hosts N, or N1,N2,... (up to 10,000 each).")
    ] = "64",
    size: _Size = "32MiB",
    up: Annotated[str, typer.Option(help=f"Each peer's upload: {_Classes}, e.g. "
                                    "20mbit:70%,5mbit:30%.")] = "20mbit",
    down: Annotated[str, typer.Option(help=f"Each peer's download: {_Classes}.")] = "100mbit",
    source_up: Annotated[str | None, typer.Option(
        help="The source's upload (default: the first --up class).")] = None,
    latency: Annotated[str, typer.Option(help="One-way latency between any two hosts.")]
    = "10ms",
    modes: _Modes = "p2p,hybrid",
    piece_size: Annotated[str | None, typer.Option(
        help="Piece length (default: what `swarmhub create` picks for --size).")] = None,
    join_rate: Annotated[float, typer.Option(
        help="Peers join as a Poisson process of this many per s (0: all at once).")] = 0.0,
    leave_rate: Annotated[float, typer.Option(
        help="Each peer leaves after an exponential time of this rate per s (0: stays).")]
    = 0.0,
    seed_leaves_after_copy: Annotated[bool, typer.Option(
        help="The source leaves once its peers received one full copy from it.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same run.")] = 1,
    out: _Out = Path("lab-report"),
    timeout: Annotated[float | None, typer.Option(
        help="Virtual-time deadline per scenario in s (default 5 x bound + 30).")] = None,
    verbose: Annotated[int, typer.Option("-v", count=True, help="More logging.")] = 0,
) -> None:
    """Run the swarm core for N peers in virtual time (one process, a fluid network with
    max-min shared links, latency and slow start); same table and report as ``lab run``.

    The ``swarmhub`` command runs it on glibc's malloc with transparent huge pages where
    it can (``-vv`` says; ``SWARMHUB_SIM_HUGEPAGES=0`` keeps CPython's allocator): see
    :mod:`swarmhub.lab.hugepages`."""
    from swarmhub.lab.hugepages import describe
    from swarmhub.lab.simrun import SimOptions, simulate
    from swarmhub.settings import Settings
    from swarmhub.ui import setup_logging

    if verbose:
        setup_logging(verbose, only="swarmhub")
    log.debug("lab simulate: memory: %s", describe())

    ns = _peers(peers)
    if max(ns) > 10_000:
        raise typer.BadParameter("at most 10,000 peers", param_hint="--peers")
    mode_list = _modes(modes)
    opts = SimOptions(
        peers=0,
        size=_parse("--size", size, parse_size),
        up=_classes("--up", up),
        down=_classes("--down", down),
        source_up_bps=_parse("--source-up", source_up, parse_rate) if source_up else None,
        latency_s=_parse("--latency", latency, parse_duration),
        piece_length=_parse("--piece-size", piece_size, parse_size) if piece_size else None,
        join_rate=join_rate,
        leave_rate=leave_rate,
        seed_leaves_after_copy=seed_leaves_after_copy,
        seed=seed,
        timeout=timeout,
        # SWARMHUB_* as for the peers of `lab run` (SWARMHUB_UPLOAD_AHEAD=0.02 was ignored)
        settings=Settings.from_env(),
    )
    if opts.join_rate < 0 or opts.leave_rate < 0:
        raise typer.BadParameter("rates must be >= 0", param_hint="--join-rate/--leave-rate")
    from swarmhub import _compiled

    if not _compiled.uses_compiled():
        console.print(f"note: {_compiled.status()}")
    results: list[ScenarioResult] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]} hosts"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        live = _Live(progress)
        for n in ns:
            for mode in mode_list:
                live.start(f"simulated {mode} N={n}", n)
                opts.peers = n
                results.append(simulate(mode, opts, live))
    _finish(results, out, True, report_home(out))  # (nothing written before the report)


if __name__ == "__main__":  # `python -m swarmhub.lab.commands run ...` until the CLI mounts it
    lab_app()
