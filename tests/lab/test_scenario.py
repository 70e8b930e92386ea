"""Small namespace scenarios (N=3, 4 MiB, 8 Mbit/s up): right bytes, physical times, no debris."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from conftest import need  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab import scenario
from swarmhub.lab.commands import register
from swarmhub.lab.report import plot_pngs, write_report
from swarmhub.lab.scenario import HostResult, ScenarioResult, run_scenario
from swarmhub.lab.topology import LabError, netns_available
from swarmhub.metainfo import read_torrent

PREFIX = f"s{os.getpid() % 100000}"
MIB = 1 << 20


def _leftovers() -> list[str]:
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    return [n for n in names if n.startswith(f"{PREFIX}-")]


def _lab_processes(workdir: Path) -> list[int]:
    """PIDs of live processes whose command line mentions this test's workdir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split()[2]
        except OSError:
            continue
        if str(workdir).encode() in cmd and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.netns
@pytest.mark.timeout(240)  # the scenario deadline (5 x bound + 30 s) plus setup, generously
@pytest.mark.parametrize("mode", ["cs", "p2p", "hybrid"])
def test_small_scenario(mode: str, tmp_path: Path) -> None:
    need(netns_available()[0], netns_available()[1])
    events: list[dict[str, object]] = []
    res = run_scenario(
        mode, 3, 4 * MIB, 8e6, 100e6, workdir=tmp_path, on_event=events.append, prefix=PREFIX
    )
    assert res.shaped
    assert res.ok, [h.error for h in res.hosts]
    # Every host has exactly the source's bytes (run_scenario checks the SHA-256; check size).
    for h in res.hosts:
        assert (tmp_path / f"h{h.host}" / "payload.bin").stat().st_size == 4 * MIB
        assert h.bytes_down >= 4 * MIB  # link-level: payload plus headers
    # Faster than physics would mean broken shaping or a broken clock. No upper margin on
    # the wall clock beyond the scenario's own deadline (res.ok): a loaded CI machine is
    # slow, not wrong.
    assert res.last_completion_s is not None and res.ratio is not None
    assert res.last_completion_s >= 0.9 * res.bound_s
    if mode == "cs":
        assert res.bound_s == pytest.approx(3 * 4 * MIB * 8 / 8e6)
        assert res.source_upload >= 3 * 4 * MIB
        # Our own client fetched it from the hub's origin, whose counter agrees.
        assert res.hub_http_bytes == 3 * 4 * MIB and res.hub_seeder_bytes == 0
    else:
        assert res.bound_s == pytest.approx(4 * MIB * 8 / 8e6)
        # The peers carried part of the load: the seeder sent less than N copies.
        assert res.source_upload < 3 * 4 * MIB
        assert sum(h.bytes_up for h in res.hosts) > 4 * MIB // 2
    if mode == "hybrid":
        # The hub was tracker and first seeder: its seeder (and web seed, if at all) sent
        # at least one copy and well under N copies.
        assert res.hub_upload is not None
        assert 4 * MIB <= res.hub_upload < 3 * 4 * MIB
    assert any(e.get("event") == "finished" for e in events)
    # Every client waited at the start gate (times count from its opening) and its CPU
    # seconds were read at the gate and at the end.
    assert res.gated
    for h in res.hosts:
        assert h.cpu_start_s is not None and h.cpu_s is not None
        assert 0 < h.cpu_start_s <= h.cpu_s
    assert _leftovers() == []
    assert _lab_processes(tmp_path) == []


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_the_libtorrent_swarm_starts_at_the_same_gate(tmp_path: Path) -> None:
    """The reference swarm is timed the same way as ours: from the gate's opening, with
    each client's start-up (interpreter, imports) before it."""
    need(netns_available()[0], netns_available()[1])
    need(importlib.util.find_spec("libtorrent") is not None, "libtorrent is not installed")
    res = run_scenario("p2p", 2, 4 * MIB, 8e6, 100e6, client="libtorrent", workdir=tmp_path,
                       prefix=PREFIX)
    assert res.ok, [h.error for h in res.hosts]
    assert res.gated
    assert res.last_completion_s is not None
    assert res.last_completion_s >= 0.9 * res.bound_s
    for h in res.hosts:
        assert h.cpu_start_s is not None and h.cpu_s is not None
        assert 0 < h.cpu_start_s <= h.cpu_s
        log = (tmp_path / "logs" / f"h{h.host}-lt.log")
        lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
        events = [ln.get("event") for ln in lines]
        assert events.index("gate") < events.index("finished")
    assert _leftovers() == []


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_hybrid_finishes_from_the_swarm_after_the_hub_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need(netns_available()[0], netns_available()[1])
    # The hub dies once the peers together hold every piece (the union of the bitfields
    # they report), however fast or loaded the machine: the swarm must finish without it.
    # (A percentage trigger once fired at 255/256 pieces under load: issue 8.)
    # Host 3's link takes 1.5 Mbit/s down, so the swarm's full copy comes seconds before it
    # can finish. With equal receivers, the super-seeding hub hands out its last piece
    # about as the first one finishes and the others finish 0.2-0.5 s later: a runner
    # starved on a busy CI machine read every finish in one poll and never struck.
    slow = 1.5e6

    class SlowLastHost(scenario.Lab):
        def __init__(self, prefix: str, hosts: int, ups: list[float], downs: list[float],
                     *args: Any, **kwargs: Any) -> None:
            super().__init__(prefix, hosts, ups, [*downs[:-1], slow], *args, **kwargs)

    monkeypatch.setattr(scenario, "Lab", SlowLastHost)
    events: list[dict[str, object]] = []
    res = run_scenario(
        "hybrid",
        3,
        4 * MIB,
        2e6,
        100e6,
        8e6,
        fault="kill-hub@full-copy",
        workdir=tmp_path,
        on_event=events.append,
        prefix=PREFIX,
        timeout=150.0,  # a hang guard: host 3's link alone needs 22 s
    )
    assert res.fault == "kill-hub@full-copy" and res.fault_at_s is not None
    assert any(e.get("event") == "fault" for e in events)
    assert res.num_pieces and res.pieces_reported_at_fault == res.num_pieces
    # The reports agree with the disks: every piece hashes right in some receiver's folder.
    assert res.pieces_held_at_fault == res.num_pieces, res.notes
    assert res.ok, [h.error for h in res.hosts]
    assert res.last_completion_s is not None and res.last_completion_s > res.fault_at_s
    # Host 3 had not finished when the hub died: it finished from the swarm.
    assert res.downloading_at_fault is not None and 3 in res.downloading_at_fault, res.notes
    by_host = {h.host: h for h in res.hosts}
    for host in res.downloading_at_fault:
        done = by_host[host].completion_s
        assert done is not None and done > res.fault_at_s
    for h in res.hosts:
        assert (tmp_path / f"h{h.host}" / "payload.bin").stat().st_size == 4 * MIB
    assert any("can finish" in n for n in res.notes)
    assert _leftovers() == []
    assert _lab_processes(tmp_path) == []


def test_unsupported_combinations_say_so(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown mode"):
        run_scenario("mesh", 2, MIB, 8e6, 8e6, workdir=tmp_path)
    with pytest.raises(LabError, match="libtorrent"):
        run_scenario("hybrid", 2, MIB, 8e6, 8e6, client="libtorrent", workdir=tmp_path)
    with pytest.raises(LabError, match="kill-hub@full-copy"):
        run_scenario("p2p", 2, MIB, 8e6, 8e6, fault="kill-everything", workdir=tmp_path)
    with pytest.raises(LabError, match="p2p only"):
        run_scenario("hybrid", 2, MIB, 8e6, 8e6, workdir=tmp_path, piece_length=64 * 1024)
    assert not (tmp_path / "source").exists()  # refused before any work


@pytest.mark.timeout(90)
def test_p2p_runs_with_the_piece_length_asked_and_notes_its_gate(tmp_path: Path) -> None:
    before = time.time()
    res = run_scenario("p2p", 2, 2 * MIB, 8e6, 100e6, workdir=tmp_path, use_netns=False,
                       piece_length=256 * 1024)
    assert res.ok, [h.error for h in res.hosts]
    # the gate's opening, as Unix time, lines the run up with outside samples
    assert res.gated and res.gate_unix_s is not None and before < res.gate_unix_s < time.time()
    assert "pieces of 256 KiB" in res.notes
    assert read_torrent(tmp_path / "payload.torrent").piece_length == 256 * 1024


@pytest.mark.timeout(90)
def test_loopback_fallback_uses_application_limits(tmp_path: Path) -> None:
    res = run_scenario("cs", 2, 2 * MIB, 8e6, 100e6, workdir=tmp_path, use_netns=False)
    assert not res.shaped
    assert res.ok, [h.error for h in res.hosts]
    assert any("loopback" in n for n in res.notes)
    # The origin's aggregate cap of 1 MB/s still holds: 2 copies of 2 MiB take >= ~4 s.
    assert res.last_completion_s is not None
    assert res.last_completion_s >= 0.8 * res.bound_s
    assert res.source_upload == 2 * 2 * MIB


def _fake(mode: str, n: int, last: float) -> ScenarioResult:
    res = ScenarioResult(
        mode=mode,
        client="swarmhub",
        peers=n,
        size=MIB,
        up_bps=8e6,
        down_bps=80e6,
        source_up_bps=8e6,
        latency_ms=0,
        shaped=True,
        bound_s=1.0,
    )
    res.hosts = [
        HostResult(
            host=i, addr=f"198.18.0.{i + 1}", completion_s=last * i / n, bytes_down=MIB, ok=True
        )
        for i in range(1, n + 1)
    ]
    res.source_upload = n * MIB if mode == "cs" else MIB
    res.last_completion_s, res.ratio, res.ok = last, last, True
    return res


def test_report_is_self_contained_with_plots(tmp_path: Path) -> None:
    results = [_fake(m, n, 2.0 * n) for n in (2, 4) for m in ("cs", "p2p")]
    path = write_report(results, tmp_path, "swarmhub lab sweep --peers 2,4")
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 3  # CDF, time vs N, source upload vs N
    assert 'src="http' not in text and "<script" not in text
    for name in ("cdf", "time_vs_n", "source_vs_n"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    again = [
        ScenarioResult.from_dict(d) for d in json.loads((tmp_path / "results.json").read_text())
    ]
    assert again == results
    # A single run (one N) still gets its CDF, without sweep plots.
    assert plot_pngs(results[:2]).keys() == {"cdf"}


@pytest.mark.timeout(120)
def test_cli_lab_run_loopback(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Root needed so that `lab` stays a sub-command."""

    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "lab",
            "run",
            "--peers",
            "2",
            "--size",
            "1MiB",
            "--up",
            "8mbit",
            "--down",
            "80mbit",
            "--modes",
            "cs",
            "--out",
            str(out),
            "--loopback",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "swarmhub lab" in result.output and "report.html" in result.output
    data = json.loads((out / "results.json").read_text())
    assert data[0]["mode"] == "cs" and data[0]["ok"] and not data[0]["shaped"]
    assert (out / "report.html").exists()
    assert not (out / "work").exists()
    bad = CliRunner().invoke(app, ["lab", "run", "--size", "lots", "--out", str(out)])
    assert bad.exit_code != 0
    bad = CliRunner().invoke(app, ["lab", "run", "--fault", "kill-all@5%", "--out", str(out)])
    assert bad.exit_code == 2 and "kill-hub@full-copy" in bad.output
