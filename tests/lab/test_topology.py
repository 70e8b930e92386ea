"""The namespace lab: reachability through the bridge, shaped rates, complete teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import need  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab import topology
from swarmhub.lab.topology import (
    LAB_NICE,
    LAB_NICE_ENV,
    RUN_PREFIX,
    SOURCE_NICE,
    SOURCE_NICE_ENV,
    TCP_CC,
    TCP_MIN_TSO_SEGS,
    Lab,
    LabError,
    LabProc,
    LoopbackLab,
    group_nice,
    lab_nice,
    netns_available,
    run_prefix,
    source_nice,
)

PREFIX = f"t{os.getpid() % 100000}"

# Receiver: accept one connection, read to EOF, report bytes and the first->last byte time.
RECEIVER = r"""
import json, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1); srv.settimeout(20)
print(json.dumps({"event": "listening"}), flush=True)
conn, _ = srv.accept(); conn.settimeout(20)
n = 0; first = None; buf = bytearray(1 << 16)
while True:
    k = conn.recv_into(buf)
    if not k: break
    if first is None: first = time.monotonic(); n0 = k
    n += k; last = time.monotonic()
rate = 8 * (n - n0) / (last - first)
print(json.dumps({"event": "finished", "bytes": n, "rate_bps": rate}), flush=True)
"""

SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
left = int(sys.argv[3]); chunk = b"x" * (1 << 16)
while left > 0:
    s.sendall(chunk[: min(left, len(chunk))]); left -= min(left, len(chunk))
s.close()
"""


def _leftovers(prefix: str) -> list[str]:
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    links = subprocess.run(
        ["ip", "-br", "link"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return [n for n in names if n.startswith(f"{prefix}-")] + [
        ln for ln in links.splitlines() if prefix in ln
    ]


def _measure(lab: Lab, src: int, dst: int, nbytes: int) -> float:
    rx = lab.run(dst, [sys.executable, "-c", RECEIVER, lab.addr(dst), "5001"], name=f"rx{dst}")
    rx.wait_json("listening", 10)
    tx = lab.run(
        src, [sys.executable, "-c", SENDER, lab.addr(dst), "5001", str(nbytes)], name=f"tx{src}"
    )
    assert tx.wait(30) == 0, tx.tail()
    done = rx.wait_json("finished", 30)
    assert done["bytes"] == nbytes
    return float(done["rate_bps"])


@pytest.mark.netns
def test_hosts_talk_through_bridge_at_shaped_rates_and_leave_nothing(tmp_path: Path) -> None:
    need(netns_available()[0], netns_available()[1])
    up = [8e6, 100e6, 100e6]
    down = [100e6, 100e6, 4e6]
    with Lab(PREFIX, 3, up, down, log_dir=tmp_path) as lab:
        # Addresses from 198.18.0.0/15, no default route on any host.
        for i in range(3):
            assert lab.addr(i).startswith("198.18.")
            assert "default" not in lab.exec(i, ["ip", "route"])
        # Every host runs the lab's TCP, whatever this machine's default (BBR here).
        tcp = lab.exec(2, ["sysctl", "-n", "net.ipv4.tcp_congestion_control",
                           "net.ipv4.tcp_min_tso_segs"]).split()  # fmt: skip
        assert tcp == [TCP_CC, str(TCP_MIN_TSO_SEGS)]
        # Upload shaping: host 0 sends at most 8 Mbit/s (2.5 MB takes ~2.5 s).
        rate_up = _measure(lab, 0, 1, 2_500_000)
        assert 0.85 * 8e6 <= rate_up <= 1.1 * 8e6, rate_up
        # Download shaping: host 2 receives at most 4 Mbit/s although host 1 sends at 100.
        rate_down = _measure(lab, 1, 2, 1_250_000)
        assert 0.85 * 4e6 <= rate_down <= 1.1 * 4e6, rate_down
        sender_tx, _ = lab.link_stats(1)
        assert sender_tx >= 1_250_000
        pids = [p.pid for p in lab.procs]
    assert _leftovers(PREFIX) == []
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.netns
def test_teardown_on_exception_and_leftover_cleanup(tmp_path: Path) -> None:
    need(netns_available()[0], netns_available()[1])
    with pytest.raises(RuntimeError), Lab(PREFIX, 2, 10e6, 10e6, log_dir=tmp_path) as lab:
        proc = lab.run(1, [sys.executable, "-c", "import time; time.sleep(60)"])
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert _leftovers(PREFIX) == []
    # A crashed run leaves namespaces behind: the next run (or cleanup_leftovers) removes them.
    subprocess.run(["ip", "netns", "add", f"{PREFIX}-h7"], check=True, timeout=10)
    subprocess.run(["ip", "netns", "add", f"{PREFIX}x-h1"], check=True, timeout=10)
    try:
        assert Lab.cleanup_leftovers(PREFIX) == [f"{PREFIX}-h7"]
        assert (
            f"{PREFIX}x-h1"
            in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
            ).stdout
        )
    finally:
        subprocess.run(["ip", "netns", "del", f"{PREFIX}x-h1"], timeout=10, check=False)
    assert _leftovers(PREFIX) == []


def test_bad_prefix_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(LabError):
        Lab("Bad-Prefix!", 2, 1e6, 1e6)
    assert list(tmp_path.iterdir()) == []  # refused before its log folder exists


def test_loopback_lab_runs_and_stops_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LoopbackLab(2, 1e6, 1e6, log_dir=tmp_path / "logs") as lab:
        p = lab.run(0, [sys.executable, "-c", "import json; print(json.dumps({'event': 'hi'}))"])
        assert p.wait_json("hi", 20) == {"event": "hi"}
        q = lab.run(1, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert q.poll() is not None
    assert any("loopback" in n for n in lab.notes)
    json.dumps(lab.notes)
    # Latency is refused, never silently skipped: loopback cannot delay packets.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(LabError, match="--latency needs the namespace lab"):
        LoopbackLab(2, 1e6, 1e6, latency_ms=10)
    assert list((tmp_path / "tmp").iterdir()) == []  # refused before its log folder exists


def test_a_run_without_a_prefix_gets_its_own_and_cleans_only_dead_owners(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two labs started at once must not delete each other's namespaces: a run that names
    no prefix gets one with its PID, and only namespaces whose owner is gone are removed
    as leftovers (no root needed: the ip commands are recorded, not run)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the labs' log folders
    mine = run_prefix()
    assert mine == run_prefix(os.getpid()) and mine.startswith(RUN_PREFIX)
    assert run_prefix(1234) != run_prefix(1235)
    Lab(mine, 2, 1e6, 1e6)  # a valid prefix, as long as the longest PID
    Lab(run_prefix(4_194_304), 2, 1e6, 1e6)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its PID names no process (until reused, which keeps it: safe)
    names = [f"{mine}-br", f"{mine}-h0", f"{run_prefix(dead.pid)}-br",
             f"{run_prefix(dead.pid)}-h3", "shlab-h0", f"{RUN_PREFIX}zz-h0"]
    ran: list[list[str]] = []

    def fake_cmd(args: list[str], **_: object) -> str:
        ran.append(list(args))
        return "\n".join(f"{n} (id: {i})" for i, n in enumerate(names)) \
            if args[:3] == ["ip", "netns", "list"] else ""

    monkeypatch.setattr(topology, "_cmd", fake_cmd)
    removed = Lab.cleanup_orphans()
    assert removed == [f"{run_prefix(dead.pid)}-br", f"{run_prefix(dead.pid)}-h3"]
    deleted = [a[3] for a in ran if a[:3] == ["ip", "netns", "del"]]
    assert deleted == removed  # the live run's and other prefixes' namespaces are kept


def test_lab_nice_reads_its_variable_and_refuses_bad_values() -> None:
    assert LAB_NICE < 0  # ahead of the machine's default, or the lab shares its cores
    assert lab_nice({}) == LAB_NICE
    assert lab_nice({LAB_NICE_ENV: "0"}) == 0
    assert lab_nice({LAB_NICE_ENV: " -3 "}) == -3
    for bad in ("x", "-21", "20"):
        with pytest.raises(LabError, match=LAB_NICE_ENV):
            lab_nice({LAB_NICE_ENV: bad})
    # the source runs ahead of the clients by default (the module docstring says why)
    assert SOURCE_NICE < LAB_NICE
    assert source_nice({}) == SOURCE_NICE
    assert source_nice({SOURCE_NICE_ENV: "-5"}) == -5
    with pytest.raises(LabError, match=SOURCE_NICE_ENV):
        source_nice({SOURCE_NICE_ENV: "-21"})


PRIORITY = "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"


@pytest.mark.netns
@pytest.mark.parametrize(("nice", "source"), [("-4", "-9"), ("0", "0"), ("0", "-3")])
def test_the_labs_processes_and_its_runner_run_at_its_niceness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nice: str, source: str
) -> None:
    """Every host's process (and the thread that times them, while the lab is up) runs at
    the lab's niceness, ahead of the machine's other work, and host 0's (the source's) at
    its own; 0 leaves everything as it was."""
    need(netns_available()[0], netns_available()[1])
    monkeypatch.setenv(LAB_NICE_ENV, nice)
    monkeypatch.setenv(SOURCE_NICE_ENV, source)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    want = int(nice) if int(nice) else before
    want_source = int(source) if int(source) or int(nice) else before
    # None where this process's session has no group of its own (a session of the init
    # process, as under many CI runners: its autogroup file reads empty)
    group_before = group_nice(os.getpid())
    with Lab(f"{PREFIX}n", 2, 10e6, 10e6, log_dir=tmp_path / "logs") as lab:
        assert os.getpriority(os.PRIO_PROCESS, 0) == want
        if group_before is not None and int(nice):
            assert group_nice(os.getpid()) == int(nice)
        assert lab.exec(1, [sys.executable, "-c", PRIORITY]).strip() == str(want)
        assert lab.exec(0, [sys.executable, "-c", PRIORITY]).strip() == str(want_source)
        for host, expect in ((0, want_source), (1, want)):
            p = lab.run(host, [sys.executable, "-c", PRIORITY], name=f"prio{host}")
            assert p.wait(20) == 0
            assert p.tail().strip().splitlines()[-1] == str(expect)
        # its session's scheduling group too: there a process's own niceness weighs only
        # against the group's other processes
        # alive until stopped (a signal), whatever the clock says
        for host, group in ((0, int(source)), (1, int(nice))):
            q = lab.run(host, [sys.executable, "-c", "import signal; signal.pause()"],
                        name=f"group{host}")
            if group_nice(q.pid) is not None and (int(nice) or int(source)):
                assert group_nice(q.pid) == group
            q.stop()
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    if group_before is not None:
        assert group_nice(os.getpid()) == group_before
    assert _leftovers(f"{PREFIX}n") == []


def test_wait_json_reads_what_a_process_wrote_just_before_it_exited(tmp_path: Path) -> None:
    """The line a process prints as it exits is found, not an "exited before" error: the
    process here writes and exits between the waiter's read of its output and its check
    for an exit (seen under load in a lab test: "rx2 exited (0) before 'finished'" above
    that very line)."""
    go = tmp_path / "go"
    os.mkfifo(go)
    # the child blocks on the pipe until the test writes to it: state, not the clock
    child = (
        "import json, sys\n"
        "open(sys.argv[1]).read()\n"
        "print(json.dumps({'event': 'finished'}), flush=True)\n"
    )
    proc = LabProc([sys.executable, "-c", child, str(go)], log_path=tmp_path / "out.log",
                   name="late")
    plain_poll = proc.poll

    def poll_after_the_last_line() -> int | None:
        proc.poll = plain_poll  # type: ignore[method-assign]  # once (stop() polls too)
        with open(go, "w") as fifo:  # the process writes its line and exits now,
            fifo.write("go")  # after the waiter's read
        proc._popen.wait(30)
        return plain_poll()

    proc.poll = poll_after_the_last_line  # type: ignore[method-assign]
    try:
        assert proc.wait_json("finished", 30) == {"event": "finished"}
    finally:
        proc.stop()
