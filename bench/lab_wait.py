"""What a netns lab run's peers wait for (issue 9: the lab at N=32 is ~1.5x the bound
where `lab simulate` says ~1.2): runs one `swarmhub lab run` (one mode) and samples, every
``--interval`` s from the start gate's opening to the last completion,

- the machine's busy CPU (/proc/stat; `swarm.py`'s "CPUs idle" spans the whole lab command,
  set-up and teardown included, so it overstates the idle time of the transfer itself),
- per lab process (all threads): CPU time and run-queue wait (/proc/PID/task/*/schedstat:
  seconds it was ready to run but waited for a core), by role (peers, seeder, delay line,
  tracker),
- per host its uplink's bytes (the bridge side's counters of its veth), as a share of its
  shaped rate: what the bound assumes is 100 % from the gate to the end.

- about once a second, every process on the machine (/proc/PID/stat, user and system) and
  /proc/stat's columns: the window's CPU by owner (issue 9: every CPU-second in the window
  that is not a client peer's is taken from the swarm) -- the client peers, the source
  (p2p's seeder, hybrid's hub), the tracker, the delay line, the lab controller (the
  `lab run` process), this sampler (with its `ip` children), kernel threads (ksoftirqd,
  kworker), every other process on the machine, steal, idle, and how much of it all ran
  in softirqs (charged to the task each interrupted: a part of the rows, not an owner).

Prints per 1 s of the run the machine's busy share, the peers' summed wait and CPU per
second, and the clients' uplink use; then the totals: the owner table, the median peer's
CPU-s and wait-s in the window, and the uplink-seconds the clients left idle. Several
modes (``--mode p2p,hybrid``) run in one `lab run`, each analysed in its own window. Needs
root (the lab does)::

    sudo .venv/bin/python bench/lab_wait.py --peers 32 --mode p2p \\
        --prefix lg23 --out /tmp/lw [--interval 0.2] [--json OUT] [-- extra lab run args]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (loaded by path in tests)
from labbench import Poller, add_lab_run_options, finish, lab_namespaces, run_lab
from swarm import LabCpu  # its roles of lab processes

UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}


def _rate(text: str) -> float:
    for unit, mult in UNITS.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * mult
    return float(text)


#: /proc/stat's first eight columns of the "cpu" line (jiffies)
STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _stat() -> list[int]:
    """The machine's jiffies by /proc/stat column (:data:`STAT_COLUMNS`)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    vals = _stat()
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


def _everyone() -> dict[str, tuple[str, float, float]]:
    """``pid N`` -> (kind, user CPU s, system CPU s) so far of every process on the machine;
    the kind of a kernel thread is its name's stem (ksoftirqd: network receive work
    deferred under load; kworker: disk writeback among others), else ``pid``. Dead
    children's times are not in a process's own (the caller adds this process's children:
    ``os.times()``)."""
    hz = os.sysconf("SC_CLK_TCK")
    got: dict[str, tuple[str, float, float]] = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        kind = next((k for k in ("ksoftirqd", "kworker", "jbd2") if comm.startswith(k)), "pid")
        got[f"pid {pid}"] = (kind, int(fields[11]) / hz, int(fields[12]) / hz)
    return got


def _sched(pid: int) -> tuple[float, float, int]:
    """(CPU s, run-queue wait s, times it ran) of every thread of ``pid``."""
    run = wait = slices = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                a, b, c = f.read().split()
                run += int(a)
                wait += int(b)
                slices += int(c)
    return run / 1e9, wait / 1e9, slices


class Sampler(Poller):
    def __init__(self, prefix: str, interval: float) -> None:
        super().__init__(interval)
        self.prefix = prefix
        self.samples: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[str, int]] = {}  # pid -> (role, host)
        self.cmds: dict[int, str] = {}
        self._n = 0
        self._every = max(1, round(1 / interval))  # whole-machine looks: about once a second

    def watch(self, pid: int, role: str) -> None:
        """Sample ``pid`` too (outside the lab's namespaces: the runner itself)."""
        self.procs[pid] = (role, -3)

    def _namespaces(self) -> dict[int, int]:
        """netns inode -> host number (-1 for the bridge)."""
        return {ino: -1 if tail == "br" else int(tail[1:]) if tail[1:].isdigit() else -2
                for ino, tail in lab_namespaces(self.prefix).items()}

    def _links(self) -> dict[int, int]:
        """host -> bytes it sent (the bridge port's received bytes)."""
        try:
            out = subprocess.run(["ip", "-n", f"{self.prefix}-br", "-j", "-s", "link"],
                                 capture_output=True, text=True, timeout=5, check=True).stdout
        except (subprocess.SubprocessError, OSError):
            return {}
        got = {}
        for dev in json.loads(out or "[]"):
            name = dev.get("ifname", "")
            if name.startswith("v") and name[1:].isdigit():
                got[int(name[1:])] = int(dev["stats64"]["rx"]["bytes"])
        return got

    def poll(self) -> None:
        self._n += 1
        n, every = self._n, self._every
        nss = self._namespaces()
        if not nss:
            return
        if n % every == 1 % every:  # new processes
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                if pid in self.procs:
                    continue
                try:
                    host = nss.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
                    if host is None:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if cmd:
                    self.procs[pid] = (_role(cmd), host)
                    self.cmds[pid] = cmd
        sample = {"wall": time.time(), "machine": _machine(), "links": self._links(),
                  "procs": {pid: _sched(pid) for pid in self.procs}}
        if n % every == 1 % every:
            sample["everyone"] = _everyone()
            sample["stat"] = _stat()
            sample["self"] = os.times()[:4]  # this sampler and its `ip` children
        self.samples.append(sample)


def _role(cmd: str) -> str:
    """A lab process's owner: swarm.py's roles, with the hub (hybrid's source: its web
    seed, tracker and seeder in one process) apart from p2p's seeder."""
    return "hub" if " hub " in cmd else LabCpu._role(cmd)


def _gate_time(out: Path, result: dict[str, Any]) -> float | None:
    """The run's gate (Unix s): the runner's own stamp, else the gate file's mtime."""
    if result.get("gate_unix_s"):
        return float(result["gate_unix_s"])
    for path in out.rglob("start-gate"):
        return path.stat().st_mtime
    return None


#: the owners' order in the table: the swarm's own processes, then what takes from them
OWNERS = ("client peers", "seeder", "hub", "tracker", "delay line", "lab controller",
          "this sampler", "ksoftirqd", "kworker", "jbd2", "other processes", "steal",
          "unaccounted", "idle", "softirq+irq")
#: rows that are a part of the task rows above them, not an owner of their own
WITHIN = ("softirq+irq",)


def owners(s: Sampler, a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[float]]:
    """CPU-s by owner between two whole-machine snapshots ``a`` and ``b``: owner ->
    [user, system] (steal and idle in the second).

    This kernel charges the ticks spent in softirqs (the bridge, veth, htb and the
    receiving TCP stacks: packet work runs in whichever task's context raised it, mostly
    the delay line's verdicts and the peers' sends) to the task they interrupted as well
    as to /proc/stat's ``softirq`` column: the ``softirq+irq`` row is a part of the task
    rows, not an owner (measured: without it the rows summed to the busy time exactly).
    ``unaccounted``: busy time no owner explains (processes that started and ended between
    the snapshots, such as another user's compiler runs; rounding)."""
    hz = os.sysconf("SC_CLK_TCK")
    got: dict[str, list[float]] = {}

    def add(owner: str, user: float, system: float) -> None:
        row = got.setdefault(owner, [0.0, 0.0])
        row[0] += user
        row[1] += system

    names = {"peers": "client peers", "runner": "lab controller"}
    me = f"pid {os.getpid()}"
    for k, (kind, u1, s1) in b["everyone"].items():
        _, u0, s0 = a["everyone"].get(k, (kind, 0.0, 0.0))  # born in between: from zero
        if k == me:
            owner = "this sampler"
        elif kind != "pid":
            owner = kind
        else:
            pid = int(k[4:])
            role = s.procs[pid][0] if pid in s.procs else None
            owner = names.get(role, role) if role else "other processes"
        add(owner, u1 - u0, s1 - s0)
    ta, tb = a["self"], b["self"]  # the sampler's children (`ip`), once reaped
    add("this sampler", tb[2] - ta[2], tb[3] - ta[3])
    d = [(y - x) / hz for x, y in zip(a["stat"], b["stat"], strict=True)]
    st = dict(zip(STAT_COLUMNS, d, strict=True))
    busy = st["user"] + st["nice"] + st["system"] + st["irq"] + st["softirq"]
    tasks = sum(u + v for u, v in got.values())
    add("unaccounted", 0.0, busy - tasks)
    add("steal", 0.0, st["steal"])
    add("idle", 0.0, st["idle"] + st["iowait"])
    add("softirq+irq", 0.0, st["softirq"] + st["irq"])
    return got


def analyse(s: Sampler, gate: float, result: dict[str, Any], up_bps: float) -> dict[str, Any]:
    end = gate + float(result["last_completion_s"])
    win = [x for x in s.samples if gate - s.interval <= x["wall"] <= end + s.interval]
    if len(win) < 3:
        return {"error": "too few samples in the run's window"}
    first, last = win[0], win[-1]
    span = last["wall"] - first["wall"]
    busy = (last["machine"][0] - first["machine"][0]) / max(1, last["machine"][1]
                                                            - first["machine"][1])
    cores = os.cpu_count() or 1
    by_role: dict[str, list[tuple[float, float]]] = {}
    per_slice: list[float] = []  # a peer's mean wait for a core each time it became ready
    for pid, (role, _host) in s.procs.items():
        # alive at both edges (an earlier mode's dead processes read as zeros)
        if pid in first["procs"] and pid in last["procs"] and last["procs"][pid][2] > 0:
            a, b = first["procs"][pid], last["procs"][pid]
            by_role.setdefault(role, []).append((b[0] - a[0], b[1] - a[1]))
            if role == "peers" and b[2] > a[2]:
                per_slice.append((b[1] - a[1]) / (b[2] - a[2]))
    peers = by_role.get("peers", [])
    rows = []
    for i in range(1, len(win)):
        x, y = win[i - 1], win[i]
        dt = y["wall"] - x["wall"]
        m = (y["machine"][0] - x["machine"][0]) / max(1, y["machine"][1] - x["machine"][1])
        cpu = wait = 0.0
        for pid, (role, _host) in s.procs.items():
            if role == "peers" and pid in x["procs"] and pid in y["procs"]:
                cpu += y["procs"][pid][0] - x["procs"][pid][0]
                wait += y["procs"][pid][1] - x["procs"][pid][1]
        hosts = [h for h in y["links"] if h > 0 and h in x["links"]]
        sent = sum(y["links"][h] - x["links"][h] for h in hosts)
        src = (y["links"].get(0, 0) - x["links"].get(0, 0)) / (up_bps / 8 * dt)
        rows.append({"t": round(y["wall"] - gate, 2), "busy": m, "peer_cpu": cpu / dt,
                     "peer_wait": wait / dt,
                     "uplink": sent / (up_bps / 8 * dt * max(1, len(hosts))),
                     "source": src})
    # the whole machine's CPU by owner (whole-machine snapshots nearest the window's edges)
    snaps = [x for x in win if "everyone" in x]
    by_owner: dict[str, list[float]] = {}
    snap_span = 0.0
    if len(snaps) >= 2:
        by_owner = owners(s, snaps[0], snaps[-1])
        snap_span = snaps[-1]["wall"] - snaps[0]["wall"]
    hosts = [h for h in last["links"] if h > 0 and h in first["links"]]
    sent = sum(last["links"][h] - first["links"][h] for h in hosts)
    idle_up = len(hosts) * span - sent / (up_bps / 8)
    return {
        "mode": result["mode"], "peers": result["peers"], "ratio": result["ratio"],
        "last_s": result["last_completion_s"], "window_s": span, "machine_busy": busy,
        "cores": cores,
        "median_peer_cpu_s": statistics.median(c for c, _ in peers) if peers else None,
        "median_peer_wait_s": statistics.median(w for _, w in peers) if peers else None,
        "median_wait_per_run_ms": 1000 * statistics.median(per_slice) if per_slice else None,
        "roles": {r: {"cpu_s": sum(c for c, _ in v), "wait_s": sum(w for _, w in v), "n": len(v)}
                  for r, v in by_role.items()},
        "client_uplink_use": sent / (up_bps / 8) / max(1e-9, len(hosts) * span),
        "client_uplink_idle_s": idle_up, "owners": by_owner, "owners_span_s": snap_span,
        "rows": rows,
    }


def _print(a: dict[str, Any], bin_s: float) -> None:
    if "error" in a:
        print(a["error"])
        return
    print(f"{a['mode']} N={a['peers']}: {a['ratio']:.2f} x bound, last {a['last_s']:.1f} s; "
          f"window {a['window_s']:.1f} s: machine busy {100 * a['machine_busy']:.0f} % of "
          f"{a['cores']} cores; median peer CPU {a['median_peer_cpu_s']:.2f} s, run-queue wait "
          f"{a['median_peer_wait_s']:.2f} s ({a['median_wait_per_run_ms']:.1f} ms each time "
          f"it became ready); clients' uplinks used "
          f"{100 * a['client_uplink_use']:.0f} % ({a['client_uplink_idle_s']:.0f} "
          f"uplink-s idle)")
    _print_owners(a)
    for role, v in sorted(a["roles"].items()):
        print(f"  {role:10} n={v['n']:3} CPU {v['cpu_s']:6.1f} s  "
              f"run-queue wait {v['wait_s']:6.1f} s")
    print(f"  {'t s':>5} {'busy %':>6} {'peers CPU/s':>11} {'peers wait/s':>12} "
          f"{'uplinks %':>9} {'source %':>8}")
    acc: list[dict[str, Any]] = []
    for r in a["rows"]:
        acc.append(r)
        if r["t"] >= (int(acc[0]["t"] / bin_s) + 1) * bin_s or r is a["rows"][-1]:
            def avg(k: str, acc: list[dict[str, Any]] = acc) -> float:
                return sum(x[k] for x in acc) / len(acc)
            print(f"  {r['t']:5.1f} {100 * avg('busy'):6.0f} {avg('peer_cpu'):11.2f} "
                  f"{avg('peer_wait'):12.2f} {100 * avg('uplink'):9.0f} "
                  f"{100 * avg('source'):8.0f}")
            acc = []


def _print_owners(a: dict[str, Any]) -> None:
    got, span = a.get("owners") or {}, a.get("owners_span_s") or 0.0
    if not got or span <= 0:
        return
    cap = span * a["cores"]
    print(f"  the machine's CPU by owner, {span:.1f} s x {a['cores']} cores = {cap:.1f} CPU-s:")
    print(f"    {'owner':18} {'CPU-s':>6} {'% cores':>7} {'user':>6} {'system':>6}")
    for owner in sorted(got, key=lambda o: OWNERS.index(o) if o in OWNERS else 99):
        u, v = got[owner]
        note = " (within the rows above)" if owner in WITHIN else ""
        print(f"    {owner:18} {u + v:6.1f} {100 * (u + v) / cap:7.1f} {u:6.1f} {v:6.1f}{note}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_lab_run_options(p, prefix="lwait", modes_option="--mode", modes_default="p2p",
                        modes_help="one mode or several: p2p,hybrid (one lab run, each "
                        "mode's window apart)")
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--bin", type=float, default=1.0, help="seconds per printed row")
    a = p.parse_args()
    with Sampler(a.prefix, a.interval) as s:
        results = run_lab(a, os.environ | {"SWARMHUB_LAB_TRACE": "1"},
                          lambda pid: s.watch(pid, "runner"))
    got = []
    for r in results:
        gate = _gate_time(a.out, r)
        if gate is None:
            print(f"{r['mode']}: no start gate found under --out")
            return 1
        got.append(analyse(s, gate, r, _rate(a.up)))
    for g in got:
        _print(g, a.bin)
    finish(got, a.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
