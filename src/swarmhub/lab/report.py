"""Lab output: a terminal table and a self-contained ``report.html`` with PNG plots.

Why self-contained: a report is shared as one file (CI artifact, issue attachment), so the
plots are embedded as base64 data URIs and the raw results ride along as JSON.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from swarmhub.lab.bounds import format_rate, format_size
from swarmhub.lab.owners import give_to_owner_of, tree
from swarmhub.lab.results import ScenarioResult, bound_for

__all__ = ["give_report_to_home_owner", "plot_pngs", "print_results", "report_home",
           "require_plotting", "results_table", "write_report"]

log = logging.getLogger(__name__)

_COLORS = {"cs": "tab:red", "p2p": "tab:blue", "hybrid": "tab:green"}


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def results_table(results: Sequence[ScenarioResult]) -> Table:
    """One row per scenario: the bound, the last completion, their ratio, the source's load."""
    table = Table(title="swarmhub lab", show_lines=False)
    for col in (
        "mode",
        "client",
        "N",
        "size",
        "up / down",
        "RTT ms",
        "bound s",
        "last s",
        "median s",
        "measured/bound",
        "source up (xF)",
        "hub http+peer (xF)",
        "client CPU-s (start-up)",
        "fault",
        "result",
    ):
        left = col in ("mode", "client", "fault", "result")
        table.add_column(col, justify="left" if left else "right")
    for r in results:
        times = sorted(h.completion_s for h in r.hosts if h.completion_s is not None)
        median = times[len(times) // 2] if times else None
        verdict = "[green]ok[/]" if r.ok else f"[red]{_failed(r)} failed[/]"
        table.add_row(
            r.mode,
            r.client,
            str(r.peers),
            format_size(r.size),
            f"{format_rate(r.up_bps)} / {format_rate(r.down_bps)}",
            _rtt(r),
            f"{r.bound_s:.1f}",
            _fmt_s(r.last_completion_s),
            _fmt_s(median),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            f"{r.source_upload / r.size:.2f}",
            _hub_x(r),
            _cpu(r),
            _fault(r),
            verdict,
        )
    return table


def _cpu(r: ScenarioResult) -> str:
    """The median client's CPU seconds over the run, with those spent before the start
    gate (interpreter and imports) in brackets: on a CPU-bound lab, what each peer costs."""
    total = sorted(h.cpu_s for h in r.hosts if h.cpu_s is not None)
    start = sorted(h.cpu_start_s for h in r.hosts if h.cpu_start_s is not None)
    if not total:
        return "-"
    out = f"{total[len(total) // 2]:.2f}"
    return out + (f" ({start[len(start) // 2]:.2f})" if start else "")


def _rtt(r: ScenarioResult) -> str:
    """``min/median`` RTT measured before the run, e.g. ``20.4/20.6`` (``-`` on loopback)."""
    if r.rtt_min_ms is None or r.rtt_median_ms is None:
        return "-"
    return f"{r.rtt_min_ms:.1f}/{r.rtt_median_ms:.1f}"


def _failed(r: ScenarioResult) -> int:
    return sum(not h.ok and not h.killed for h in r.hosts)


def _hub_x(r: ScenarioResult) -> str:
    hub = r.hub_upload
    return "-" if hub is None else f"{hub / r.size:.2f}"


def _fault(r: ScenarioResult) -> str:
    if not r.fault:
        return "-"
    text = r.fault
    if r.fault_at_s is not None:
        text += f" at {r.fault_at_s:.1f} s"
    if r.pieces_held_at_fault is not None:
        text += f", swarm held {r.pieces_held_at_fault}/{r.num_pieces}"
    elif r.pieces_reported_at_fault is not None:
        text += f", swarm reported {r.pieces_reported_at_fault} pieces"
    killed = sum(h.killed for h in r.hosts)
    if killed:
        text += f", {killed} killed"
    return text


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def require_plotting() -> None:
    """Fail before a run, in one line, when the plots could not be drawn after it.

    matplotlib (and numpy) are an extra: most users of swarmhub never run the lab.
    """
    import importlib.util

    from swarmhub.lab.shell import LabError

    if importlib.util.find_spec("matplotlib") is None:
        raise LabError("the lab's plots need matplotlib: pip install 'swarmhub[lab]'")


def plot_pngs(results: Sequence[ScenarioResult]) -> dict[str, bytes]:
    """Named PNGs: completion-time CDF per mode (largest N), and, when several N were run,
    time vs N with the bound curves and source upload vs N."""
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs: dict[str, bytes] = {}
    if not results:
        return pngs
    modes = list(dict.fromkeys(r.mode for r in results))
    n_max = max(r.peers for r in results)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results:
        if r.peers != n_max:
            continue
        times = sorted(h.completion_s for h in r.hosts if h.completion_s is not None)
        if not times:
            continue
        ys = [(i + 1) / r.peers for i in range(len(times))]
        color = _COLORS.get(r.mode)
        ax.step(
            [0.0, *times], [0.0, *ys], where="post", label=f"{r.mode} ({r.client})", color=color
        )
        ax.axvline(r.bound_s, linestyle=":", color=color, alpha=0.7)
    ax.set_xlabel("completion time (s)")
    ax.set_ylabel("fraction of hosts done")
    ax.set_title(f"Completion-time CDF, N={n_max} (dotted: bound)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    pngs["cdf"] = _png(fig)
    plt.close(fig)

    ns = sorted({r.peers for r in results})
    if len(ns) > 1:
        ref = results[0]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        dense = list(range(min(ns), max(ns) + 1))
        for mode in modes:
            color = _COLORS.get(mode)
            pts = sorted(
                (r.peers, r.last_completion_s)
                for r in results
                if r.mode == mode and r.last_completion_s is not None
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    "o-",
                    color=color,
                    label=f"{mode} measured",
                )
            bounds = [
                bound_for(mode, n, ref.size, ref.up_bps, ref.down_bps, ref.source_up_bps)
                for n in dense
            ]
            ax.plot(dense, bounds, "--", color=color, alpha=0.7, label=f"{mode} bound")
        ax.set_xlabel("N (receiving hosts)")
        ax.set_ylabel("last completion (s)")
        ax.set_title("Distribution time vs N")
        ax.grid(alpha=0.3)
        ax.legend()
        pngs["time_vs_n"] = _png(fig)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for mode in modes:
            pts = sorted((r.peers, r.source_upload / r.size) for r in results if r.mode == mode)
            ax.plot(
                [p[0] for p in pts], [p[1] for p in pts], "o-", color=_COLORS.get(mode), label=mode
            )
        ax.plot(ns, ns, ":", color="gray", label="N x F")
        ax.set_xlabel("N (receiving hosts)")
        ax.set_ylabel("source upload (multiples of F)")
        ax.set_title("Source upload vs N")
        ax.grid(alpha=0.3)
        ax.legend()
        pngs["source_vs_n"] = _png(fig)
        plt.close(fig)
    return pngs


_CSS = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td.l{text-align:left}.bad{color:#b00}
img{max-width:100%;display:block;margin:1em 0}code{background:#f4f4f4;padding:1px 4px}
"""


def _html_table(results: Sequence[ScenarioResult]) -> str:
    head = (
        "<tr><th>mode</th><th>client</th><th>N</th><th>size</th><th>up / down</th>"
        "<th>latency ms</th><th>RTT min/median ms</th><th>bound s</th><th>last s</th>"
        "<th>measured/bound</th><th>source up (xF)</th>"
        "<th>hub http+peer (xF)</th><th>fault</th><th>result</th></tr>"
    )
    rows = []
    for r in results:
        ok = "ok" if r.ok else f"<span class=bad>{_failed(r)} failed</span>"
        rows.append(
            f"<tr><td class=l>{r.mode}</td><td class=l>{html.escape(r.client)}</td>"
            f"<td>{r.peers}</td><td>{format_size(r.size)}</td>"
            f"<td>{format_rate(r.up_bps)} / {format_rate(r.down_bps)}</td>"
            f"<td>{r.latency_ms:g}</td><td>{_rtt(r)}</td><td>{r.bound_s:.2f}</td><td>{_fmt_s(r.last_completion_s)}</td>"
            f"<td>{'-' if r.ratio is None else f'{r.ratio:.3f}'}</td>"
            f"<td>{r.source_upload / r.size:.2f}</td><td>{_hub_x(r)}</td>"
            f"<td class=l>{html.escape(_fault(r))}</td><td class=l>{ok}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _fmt_cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _hosts_table(r: ScenarioResult) -> str:
    rows = "".join(
        f"<tr><td>{h.host}</td><td class=l>{h.addr}</td><td>{_fmt_s(h.completion_s)}</td>"
        f"<td>{format_size(h.bytes_down)}</td><td>{format_size(h.bytes_up)}</td>"
        f"<td>{format_size(h.webseed_bytes)}</td><td>{_fmt_cpu(h.cpu_s)}</td>"
        f"<td>{_fmt_cpu(h.cpu_start_s)}</td>"
        f"<td class=l>{'ok' if h.ok else html.escape(h.error)}</td></tr>"
        for h in r.hosts
    )
    return (
        f"<details><summary>{r.mode}, N={r.peers}: per host</summary><table><tr><th>host"
        "</th><th>address</th><th>done s</th><th>down</th><th>up</th><th>web seed</th>"
        "<th>CPU s</th><th>of which start-up</th><th>result</th></tr>"
        f"{rows}</table></details>"
    )


def write_report(results: Sequence[ScenarioResult], out_dir: Path, command: str = "") -> Path:
    """Write ``report.html``, the PNGs and ``results.json`` into ``out_dir``; return the HTML."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot_pngs(results)
    for name, data in pngs.items():
        (out_dir / f"{name}.png").write_bytes(data)
    (out_dir / "results.json").write_text(
        json.dumps([r.to_dict() for r in results], indent=2), "utf-8"
    )
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    shaped = all(r.shaped for r in results)
    env = (
        "network namespaces with htb shaping"
        if shaped
        else "<b>loopback mode</b>: application-level rate limits, not link shaping"
    )
    if results and all(r.client == "simulated" for r in results):
        env = ("<b>simulation</b> in virtual time: the swarm core of every peer over a fluid "
               "network model (max-min shared links, latency, TCP slow start)")
    imgs = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in pngs.items()
    )
    body = (
        "<!doctype html><html><head><meta charset=utf-8><title>swarmhub lab report</title>"
        f"<style>{_CSS}</style></head><body><h1>swarmhub lab report</h1>"
        f"<p>Emulation: {env}.</p>"
        + (f"<p>Command: <code>{html.escape(command)}</code></p>" if command else "")
        + "<p>Bounds: client-server <code>max(N·F/u_s, F/d_min)</code>; peer-to-peer "
        "<code>max(F/u_s, F/d_min, N·F/(u_s+Σu_i))</code>. TCP over htb reaches about "
        "1/1.046 of the shaped rate, so measured/bound ≈ 1.05 is the practical floor.</p>"
        + _html_table(results)
        + imgs
        + "".join(_hosts_table(r) for r in results)
        + (
            "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
            if notes
            else ""
        )
        + "</body></html>"
    )
    path = out_dir / "report.html"
    path.write_text(body, "utf-8")
    log.info("wrote %s", path)
    return path


def report_home(out: Path) -> Path:
    """The folder the report folder ``out`` is made in: ``out`` when it exists already,
    else its nearest existing ancestor. Taken before a run (which creates ``out/work``)."""
    home = out.absolute()
    while not home.exists() and home != home.parent:  # bounded: one step up per part
        home = home.parent
    return home


def give_report_to_home_owner(out: Path, home: Path) -> int:
    """As root (the netns lab), give what a run wrote under ``out`` the owner of ``home``
    (:func:`report_home`, taken before the run): all of the folder it created in ``home``,
    or, into an ``out`` that was there, the report's files and ``work/``. Why: a root
    ``lab run`` in a user's checkout left a ``lab-report/`` its owner could not remove
    (:mod:`swarmhub.lab.owners`). Returns how many paths changed owner (0 unless root)."""
    if os.geteuid() != 0:
        return 0
    out = out.absolute()
    if out != home:
        paths = tree(home / out.relative_to(home).parts[0])
    else:
        files = [out / "report.html", out / "results.json", *out.glob("*.png")]
        paths = itertools.chain((str(f) for f in files if f.exists()), tree(out / "work"))
    return give_to_owner_of(home, paths)


def print_results(results: Sequence[ScenarioResult], console: Console | None = None) -> None:
    (console or Console()).print(results_table(results))
