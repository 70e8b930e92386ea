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

Prints per 1 s of the run the machine's busy share, the peers' summed wait and CPU per
second, and the clients' uplink use; then the totals: the median peer's CPU-s and wait-s
in the window, and the uplink-seconds the clients left idle. Needs root (the lab does)::

    flock /work/notes/lab.lock .venv/bin/python bench/lab_wait.py --peers 32 --mode p2p \\
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
import threading
import time
from pathlib import Path
from typing import Any

from swarm import LabCpu  # bench/ is the script's folder: its roles of lab processes

UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}


def _rate(text: str) -> float:
    for unit, mult in UNITS.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * mult
    return float(text)


def _machine() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


def _everyone() -> dict[str, float]:
    """CPU seconds so far of every process on the machine, summed by kind: kernel
    threads by name (ksoftirqd: network receive work deferred under load; kworker: disk
    writeback among others), the rest as "other processes"."""
    hz = os.sysconf("SC_CLK_TCK")
    got: dict[str, float] = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        kind = next((k for k in ("ksoftirqd", "kworker", "jbd2") if comm.startswith(k)),
                    f"pid {pid}")
        got[kind] = got.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / hz
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


class Sampler:
    def __init__(self, prefix: str, interval: float, source_nice: int | None = None) -> None:
        self.prefix, self.interval = prefix, interval
        #: an experiment: the source host's processes at this nice value once seen
        self.source_nice = source_nice
        self.samples: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[str, int]] = {}  # pid -> (role, host)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def watch(self, pid: int, role: str) -> None:
        """Sample ``pid`` too (outside the lab's namespaces: the runner itself)."""
        self.procs[pid] = (role, -3)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _namespaces(self) -> dict[int, int]:
        """netns inode -> host number (-1 for the bridge)."""
        out: dict[int, int] = {}
        with contextlib.suppress(OSError):
            for name in os.listdir("/run/netns"):
                if not name.startswith(self.prefix + "-"):
                    continue
                tail = name[len(self.prefix) + 1:]
                host = -1 if tail == "br" else int(tail[1:]) if tail[1:].isdigit() else -2
                with contextlib.suppress(OSError):
                    out[os.stat(f"/run/netns/{name}").st_ino] = host
        return out

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

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            nss = self._namespaces()
            if not nss:
                continue
            if n % 5 == 1:  # new processes: look every fifth sample
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
                        self.procs[pid] = (LabCpu._role(cmd), host)
                        if host == 0 and self.source_nice is not None:
                            for tid in os.listdir(f"/proc/{pid}/task"):
                                with contextlib.suppress(OSError):
                                    os.setpriority(os.PRIO_PROCESS, int(tid), self.source_nice)
            sample = {"wall": time.time(), "machine": _machine(), "links": self._links(),
                      "procs": {pid: _sched(pid) for pid in self.procs}}
            if n % 5 == 1:
                sample["everyone"] = _everyone()
            self.samples.append(sample)


def _gate_time(out: Path) -> float | None:
    for path in out.rglob("start-gate"):
        return path.stat().st_mtime
    return None


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
        if pid in first["procs"] and pid in last["procs"]:
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
    # the whole machine's CPU by kind (whole-second snapshots nearest the window's edges)
    snaps = [x for x in win if "everyone" in x]
    kinds: dict[str, float] = {}
    if len(snaps) >= 2:
        a0, a1 = snaps[0]["everyone"], snaps[-1]["everyone"]
        lab_pids = {f"pid {pid}" for pid in s.procs}
        for k, v in a1.items():
            d = v - a0.get(k, 0.0)
            kind = k if not k.startswith("pid ") else "lab" if k in lab_pids else "others"
            kinds[kind] = kinds.get(kind, 0.0) + d
        kinds["span_s"] = snaps[-1]["wall"] - snaps[0]["wall"]
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
        "client_uplink_idle_s": idle_up, "machine_by_kind": kinds, "rows": rows,
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
    kinds = a.get("machine_by_kind") or {}
    if kinds:
        print(f"  the machine's CPU-s over {kinds['span_s']:.1f} s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])
            if k != "span_s"))
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peers", type=int, default=32)
    p.add_argument("--mode", default="p2p")
    p.add_argument("--size", default="32MiB")
    p.add_argument("--up", default="20mbit")
    p.add_argument("--down", default="100mbit")
    p.add_argument("--latency", default="10ms")
    p.add_argument("--prefix", default="lwait")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--bin", type=float, default=1.0, help="seconds per printed row")
    p.add_argument("--json", type=Path)
    p.add_argument("--source-nice", type=int, help="experiment: renice host 0's processes "
                   "(seeder, tracker; threads started later inherit it)")
    p.add_argument("--swarmhub", default=str(Path(sys.executable).parent / "swarmhub"))
    p.add_argument("extra", nargs="*", help="more `lab run` arguments (after --)")
    a = p.parse_args()
    cmd = [a.swarmhub, "lab", "run", "--peers", str(a.peers), "--modes", a.mode, "--size",
           a.size, "--up", a.up, "--down", a.down, "--latency", a.latency, "--prefix",
           a.prefix, "--out", str(a.out), "--keep", *a.extra]
    print(f"load average {os.getloadavg()}; {' '.join(cmd)}", flush=True)
    with Sampler(a.prefix, a.interval, a.source_nice) as s:
        proc = subprocess.Popen(cmd, env=os.environ | {"SWARMHUB_LAB_TRACE": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s.watch(proc.pid, "runner")
        stdout, stderr = proc.communicate(timeout=1800)
    print(stdout[-3000:], stderr[-2000:], sep="\n", flush=True)
    results = json.loads((a.out / "results.json").read_text())
    gate = _gate_time(a.out)
    if gate is None:
        print("no start gate found under --out")
        return 1
    got = [analyse(s, gate, r, _rate(a.up)) for r in results]
    for g in got:
        _print(g, a.bin)
    print(f"load average {os.getloadavg()}")
    if a.json:
        a.json.write_text(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
