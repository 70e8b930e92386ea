"""Latency in the namespace lab: the RTT it promises, shaped rates under it, a clean teardown,
and a clear refusal where it cannot work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import need  # type: ignore[import-not-found,unused-ignore]
from lab.test_topology import _leftovers, _measure  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab.commands import register
from swarmhub.lab.latency import (
    RTT_PROBE,
    RttStats,
    build_delayline,
    latency_support,
    parse_probe,
    probe_plan,
    rtt_problem,
)
from swarmhub.lab.scenario import run_scenario
from swarmhub.lab.topology import Lab, LabError, LoopbackLab, netns_available

PREFIX = f"l{os.getpid() % 100000}"


def _need_latency() -> None:
    need(netns_available()[0], netns_available()[1])
    need(latency_support()[0], latency_support()[1])


# -- pure -----------------------------------------------------------------------------------------


def test_rtt_stats_and_the_tolerance() -> None:
    stats = RttStats.from_samples({"a->b": [20.4, 20.6, 21.0], "a->c": [20.5, 30.0]})
    assert (stats.min_ms, stats.median_ms, stats.max_ms) == (20.4, 20.6, 30.0)
    assert (stats.samples, stats.pairs) == (5, 2)
    assert "median 20.60 ms" in str(stats)
    assert rtt_problem(stats, 10) is None  # 20 ms +-10 %
    assert rtt_problem(stats, 0) is None  # no latency asked: nothing to hold
    problem = rtt_problem(stats, 5)
    assert problem is not None and "RTT of 10 ms" in problem and "20.60" in problem
    assert rtt_problem(RttStats(17.9, 17.9, 17.9, 1, 1), 10) is not None  # too short is wrong too
    with pytest.raises(LabError, match="a->c"):
        RttStats.from_samples({"a->b": [1.0], "a->c": []})


def test_probe_plan_crosses_every_link() -> None:
    assert probe_plan(1) == []
    assert probe_plan(2) == [(0, [1])]
    assert probe_plan(4) == [(0, [1, 2, 3]), (3, [1])]


def test_probe_output_parsing() -> None:
    assert parse_probe('noise\n{"198.18.0.2": [20.1, 20.3]}\n') == {"198.18.0.2": [20.1, 20.3]}
    with pytest.raises(LabError, match="no result"):
        parse_probe("Traceback ...")


# -- refusals -------------------------------------------------------------------------------------


def test_latency_is_refused_where_packets_cannot_be_delayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(LabError, match="--latency needs the namespace lab"):
        LoopbackLab(2, 1e6, 1e6, latency_ms=10)
    with pytest.raises(LabError, match="--latency"):
        run_scenario("cs", 2, 1 << 20, 8e6, 8e6, latency_ms=10, workdir=tmp_path, use_netns=False)
    assert not (tmp_path / "source").exists()  # refused before any work
    with pytest.raises(LabError, match="--latency"):
        run_scenario("cs", 2, 1 << 20, 8e6, 8e6, latency_ms=10, use_netns=False)
    assert list(temp.iterdir()) == []  # no log folder left behind by a refusal

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Root needed so that `lab` stays a sub-command."""

    out = tmp_path / "report"
    res = CliRunner().invoke(
        app, ["lab", "run", "--loopback", "--latency", "10ms", "--out", str(out)]
    )
    assert res.exit_code == 2
    assert "error:" in res.output and "--latency" in res.output
    assert len(res.output.strip().splitlines()) == 1  # one clear line
    assert not out.exists()


# -- the delay line -------------------------------------------------------------------------------


def test_the_delay_line_builds_once_into_its_cache(tmp_path: Path) -> None:
    need(shutil.which("gcc") is not None, "gcc is not installed (make setup installs it)")
    need(
        Path("/usr/include/libnetfilter_queue/libnetfilter_queue.h").exists(),
        "libnetfilter-queue-dev is not installed (make setup installs it)",
    )
    binary = build_delayline(tmp_path)
    assert binary.parent == tmp_path and os.access(binary, os.X_OK)
    built = binary.stat().st_mtime_ns
    assert build_delayline(tmp_path) == binary and binary.stat().st_mtime_ns == built
    usage = subprocess.run([str(binary)], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 1 and "usage" in usage.stderr


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_latency_10ms_gives_a_20ms_rtt_between_any_two_hosts(tmp_path: Path) -> None:
    _need_latency()
    with Lab(PREFIX, 3, 100e6, 100e6, latency_ms=10, log_dir=tmp_path) as lab:
        assert lab.rtt is not None and 18 <= lab.rtt.median_ms <= 22, lab.rtt
        assert lab.rtt.min_ms >= 20 * 0.98  # never shorter than asked
        assert any("RTT" in n and "delay line" in n for n in lab.notes)
        # A pair the lab's own check did not use (1 -> 2, both ways), probed independently.
        for src, dst in ((1, 2), (2, 1)):
            out = lab.exec(src, [sys.executable, "-I", "-S", "-c", RTT_PROBE, "9", "0.01",
                                 lab.addr(dst)])  # fmt: skip
            stats = RttStats.from_samples(parse_probe(out))
            assert rtt_problem(stats, 10) is None, stats
        assert lab.delayline is not None and lab.delayline.alive
        # Only the bridge namespace holds the rule (host namespaces stay untouched).
        rules = lab.exec(0, ["iptables", "-S", "FORWARD"])
        assert "NFQUEUE" not in rules
        bridge = subprocess.run(
            ["ip", "netns", "exec", lab.bridge_ns, "iptables", "-S", "FORWARD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        assert "NFQUEUE --queue-num 0" in bridge


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_shaped_rates_hold_under_latency(tmp_path: Path) -> None:
    _need_latency()
    rates: dict[float, tuple[float, float]] = {}
    for latency in (0.0, 10.0):
        # host 0 uploads at 8 Mbit/s; host 2 downloads at 4 Mbit/s.
        with Lab(PREFIX, 3, [8e6, 100e6, 100e6], [100e6, 100e6, 4e6], latency,
                 log_dir=tmp_path / f"{latency:g}ms") as lab:
            rates[latency] = (_measure(lab, 0, 1, 2_500_000), _measure(lab, 1, 2, 1_250_000))
    for i, shaped in enumerate((8e6, 4e6)):
        plain, delayed = rates[0.0][i], rates[10.0][i]
        # Goodput carries ~4.4 % of TCP/IP headers below the link rate; slow start over a
        # 20 ms RTT costs a little more on a 2-3 s transfer: 0.90 is the honest floor.
        assert 0.90 * shaped <= delayed <= 1.02 * shaped, (shaped, delayed)
        assert delayed >= 0.95 * plain, (shaped, plain, delayed)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_a_lab_with_latency_leaves_no_process_or_namespace(tmp_path: Path) -> None:
    # 10 ms, not 5, here and below: a lab refuses an RTT off by more than 10 %, and on a busy
    # machine the wake-ups add ~1 ms (seen once: median 11.6 ms for 5 ms, the lab refused).
    _need_latency()
    with Lab(PREFIX, 2, 10e6, 10e6, latency_ms=10, log_dir=tmp_path) as lab:
        assert lab.delayline is not None
        pid = lab.delayline.pid
        sleeper = lab.run(1, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert lab.delayline.poll() is not None and sleeper.poll() is not None
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert _leftovers(PREFIX) == []
    # The delay line said what it held: every packet released, none dropped.
    last = lab.delayline.log.read_text().strip().splitlines()[-1]
    assert '"event": "stopped"' in last and '"dropped": 0' in last


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_without_its_delay_line_the_lab_carries_nothing_rather_than_no_latency(
    tmp_path: Path,
) -> None:
    _need_latency()
    with Lab(PREFIX, 2, 10e6, 10e6, latency_ms=10, log_dir=tmp_path) as lab:
        assert lab.delayline is not None
        lab.delayline.kill()
        with pytest.raises(LabError, match="no round trip"):
            lab.measure_rtt(samples=1)


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_the_delay_holds_for_other_hosts_while_a_bulk_flow_crosses_the_bridge(
    tmp_path: Path,
) -> None:
    """The delay line sleeps on its timer while it holds packets and takes arrival times from
    the kernel's stamps: packets that come in meanwhile must still leave one delay after they
    arrived, not when it next woke (a busy line was the case that skipped the per-packet
    wake-ups)."""
    _need_latency()
    from lab.test_topology import RECEIVER, SENDER  # type: ignore[import-not-found,unused-ignore]

    # host 1 sends 6 MB at 20 Mbit/s (~2.4 s) to host 2; host 0 probes host 3 meanwhile
    up = [100e6, 20e6, 100e6, 100e6]
    with Lab(PREFIX, 4, up, 100e6, latency_ms=10, log_dir=tmp_path) as lab:
        rx = lab.run(2, [sys.executable, "-c", RECEIVER, lab.addr(2), "5001"], name="rx2")
        rx.wait_json("listening", 10)
        tx = lab.run(1, [sys.executable, "-c", SENDER, lab.addr(2), "5001", "6000000"],
                     name="tx1")  # fmt: skip
        out = lab.exec(0, [sys.executable, "-I", "-S", "-c", RTT_PROBE, "15", "0.02",
                           lab.addr(3)])  # fmt: skip
        assert tx.poll() is None, "the bulk flow ended before the probe: it proves nothing"
        stats = RttStats.from_samples(parse_probe(out))
        assert rtt_problem(stats, 10) is None, stats
        assert stats.min_ms >= 20 * 0.97, stats  # released at most the slack (0.2 ms) early
        assert tx.wait(60) == 0, tx.tail()
        assert rx.wait_json("finished", 30)["bytes"] == 6_000_000
        assert lab.delayline is not None
    stopped = [ln for ln in lab.delayline.log.read_text().splitlines() if '"stopped"' in ln]
    counts = json.loads(stopped[-1])
    assert counts["dropped"] == 0 and counts["packets"] >= 6_000_000 // 65536
    # This kernel stamps packets (the line then sleeps on its timer while it holds some);
    # without stamps it would fall back to waking on every arrival.
    assert counts["kernel_stamps"] is True, counts
