"""Emulated hosts: one network namespace per host, veth pairs into a bridge namespace.

Why namespaces: a lab run must compare client-server and peer-to-peer on links with
known, enforced rates, on one machine, without touching the machine's own network.

Layout for prefix ``P`` and N hosts (nothing is created in the root namespace)::

    P-br   bridge namespace: device ``br0``, ports ``v0 .. v{N-1}`` (no address)
    P-h<i> host namespace: ``lo`` up, ``eth0`` = 198.18.0.<i+1>/24, no default route

Shaping uses htb only (this kernel has no ``sch_netem``): a host's upload is an htb class
on its own ``eth0`` egress, its download one on the bridge port ``v<i>`` egress. Every
host runs TCP with :data:`TCP_CC` (``reno``), whatever the machine's default: results then
do not depend on the machine, and a window-based TCP is what the simulator models. This
machine's default, BBR, paces every flow in 2-segment packets: 3.5x the packets of reno
for the same bytes (5 MiB at 20 Mbit/s: 3,615 vs 1,044 through the delay line), and the
lab's CPU goes per packet (the delay line, the bridge, our peers' reads). For the same
reason TCP sends at least :data:`TCP_MIN_TSO_SEGS` segments per packet (one GSO packet,
MSS 1448 as ever): a 16 KiB block crosses the lab in one packet instead of six, as a real
receiver's GRO would hand it over. N=16 p2p, 2 -> 8: 250k packets instead of 340k, 12 %
less CPU in all; 8 -> 16 (labcpu-42): one 5 MiB stream 999 -> 553 packets through the
delay line, N=32 the delay line's CPU -14 % (ours 11.7/11.6 -> 9.9/10.2 CPU-s for p2p +
hybrid, libtorrent's swarm 13.5/14.3 -> 12.0/11.6); shaped rates and the RTT hold
(bench/lab_latency.py: 0.947 / 0.948 of the shaped rate, RTT 20.2 ms; tests/lab). Latency
is an NFQUEUE delay line in the bridge namespace (:mod:`swarmhub.lab.latency`), between
the two shapers; every lab measures the hosts' round-trip time before it is used
(:attr:`Lab.rtt`) and refuses to run when that RTT is not the one asked for.

The lab's processes (every host's, and the runner's own thread while the lab is up) run at
niceness :data:`LAB_NICE` (-5; ``SWARMHUB_LAB_NICE`` sets another, 0 turns it off): from
the start gate to the last completion a lab at N=32 keeps both cores busy, and the rest of
the machine's work took 11-19 % of them (bench/lab_wait.py's owner table), time the
swarm's peers waited for. Each lab process leads a session of its own, hence (with the
kernel's autogroup scheduling, on here) a scheduling group of its own, and a niceness
weighs only within a group: so the nice value goes on each process *and* on its group
(``/proc/PID/autogroup``). Relative to each other the lab's processes keep equal weights,
so on a machine with nothing else to run it changes nothing.

Except the source: host 0 (p2p's seeder and tracker, the hub in cs and hybrid, for every
client, libtorrent's seeder too) runs at :data:`SOURCE_NICE` (-15; ``SWARMHUB_LAB_SOURCE_NICE``
sets another, the lab's own niceness makes it equal). The lab stands for N + 1 machines,
each with its own CPU, and on two cores it cannot give them that; the clients are alike,
so sharing the cores equally keeps them fair to each other, but an equal share starves
the one host every client waits on: a 1/33 share at N=32 held the source's uplink ~45 %
busy (bench/lab_wait.py: ready to run 37 s of a 28 s window), so the run measured the
source's share of the machine. A real source is a machine of its own; so is this one,
as far as two cores allow (it needs ~5-10 % of them). Measured in the closing note of
stop 39 and in bench/README.md (``lab_wait.py``).

Teardown (namespaces, hence their veths, and every process started with :meth:`Lab.run`,
killed by PID) runs on normal exit, on exceptions, on Ctrl-C and on SIGTERM.
:class:`LoopbackLab` offers the same interface on 127.0.0.1 for machines without root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from swarmhub.lab.latency import (
    RTT_PROBE,
    RttStats,
    build_delayline,
    delayline_argv,
    iptables_rule,
    latency_support,
    parse_probe,
    probe_plan,
    rtt_problem,
)
from swarmhub.lab.shell import CMD_TIMEOUT, LabError, run_cmd
from swarmhub.procs import pid_alive

__all__ = [
    "CMD_TIMEOUT",
    "HOST_NET",
    "LAB_NICE",
    "LAB_NICE_ENV",
    "RUN_PREFIX",
    "SOURCE_NICE",
    "SOURCE_NICE_ENV",
    "Lab",
    "LabError",
    "LabProc",
    "LoopbackLab",
    "link_bytes",
    "netns_available",
    "run_prefix",
]

log = logging.getLogger(__name__)

#: The hosts' subnet: inside 198.18.0.0/15 (RFC 2544 benchmarking range), never routed.
HOST_NET = "198.18.0"
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,11}")
#: A run's own prefix when none is given: this, then the owner process's PID in hex
#: (see :func:`run_prefix`); no other prefix is ever cleaned up unasked.
RUN_PREFIX = "shrun"
_RUN_NS_RE = re.compile(re.escape(RUN_PREFIX) + r"([0-9a-f]{1,7})-(br|h[0-9]+)")
_MAX_HOSTS = 250
#: The hosts' TCP congestion control (see the module docstring). Reno is built in and
#: always allowed in a namespace (cubic may not be: only ``tcp_allowed_congestion_control``
#: of the root namespace is).
TCP_CC = "reno"
#: The hosts' ``net.ipv4.tcp_min_tso_segs`` (kernel default 2; see the module docstring).
TCP_MIN_TSO_SEGS = 16
#: The niceness of a namespace lab's processes (see the module docstring) and the variable
#: that sets another (-20..19; 0: the machine's default).
LAB_NICE = -5
LAB_NICE_ENV = "SWARMHUB_LAB_NICE"
#: The niceness of host 0's processes (the source; see the module docstring) and the
#: variable that sets another.
SOURCE_NICE = -15
SOURCE_NICE_ENV = "SWARMHUB_LAB_SOURCE_NICE"
_cmd = run_cmd


def group_nice(pid: int) -> int | None:
    """The niceness of ``pid``'s autogroup (None: none here, or the process is scheduled
    by a cgroup of its own, which leaves the file empty)."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _set_group_nice(pid: int, nice: int) -> None:
    """Set the niceness of ``pid``'s autogroup (its session's); a no-op without one."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as f:
        f.write(str(nice))


def lab_nice(env: Mapping[str, str] = os.environ) -> int:
    """The niceness the lab's processes run at: ``SWARMHUB_LAB_NICE`` or :data:`LAB_NICE`."""
    return _nice_setting(env, LAB_NICE_ENV, LAB_NICE)


def source_nice(env: Mapping[str, str] = os.environ) -> int:
    """The niceness host 0's processes run at: ``SWARMHUB_LAB_SOURCE_NICE`` or
    :data:`SOURCE_NICE`."""
    return _nice_setting(env, SOURCE_NICE_ENV, SOURCE_NICE)


def _nice_setting(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise LabError(f"{name} must be an integer -20..19, got {text!r}") from None
    if not -20 <= value <= 19:
        raise LabError(f"{name} must be -20..19, got {value}")
    return value


# -- availability -------------------------------------------------------------------------------

_AVAILABLE: tuple[bool, str] | None = None


def netns_available() -> tuple[bool, str]:
    """(True, "") when namespaces, veths and htb all work here; else (False, why not)."""
    global _AVAILABLE
    if _AVAILABLE is not None:
        return _AVAILABLE
    if os.geteuid() != 0:
        _AVAILABLE = (False, "the namespace lab needs root (CAP_NET_ADMIN)")
        return _AVAILABLE
    probe = f"shprobe{os.getpid()}"
    try:
        _cmd(["ip", "netns", "add", probe])
        try:
            _cmd(["ip", "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "a1"])
            _htb(probe, "a0", 8e6)
        finally:
            _cmd(["ip", "netns", "del", probe], check=False)
    except LabError as exc:
        _AVAILABLE = (False, f"network namespaces with htb do not work here: {exc}")
        return _AVAILABLE
    _AVAILABLE = (True, "")
    return _AVAILABLE


def _htb(ns: str, dev: str, rate_bps: float) -> None:
    """Shape ``dev``'s egress to ``rate_bps`` with one htb class (rate = ceil)."""
    rate = f"{int(rate_bps)}bit"
    tc = ["tc", "-n", ns]
    _cmd([*tc, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"])
    _cmd([*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
          rate, "ceil", rate])  # fmt: skip


# -- processes ----------------------------------------------------------------------------------


class LabProc:
    """A process on a lab host: output in a file, bounded waits, stopped by PID (its group)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: Path,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        dht_nets: str = "1",
    ) -> None:
        self.args = list(args)
        self.name = name
        self.log = log_path
        self.returncode: int | None = None
        self._out = open(log_path, "wb")  # noqa: SIM115 - closed when reaped
        self.started = time.monotonic()
        try:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                # lab peers never join the public DHT: off unless given local bootstrap
                # nodes (--dht-bootstrap), and never a datagram outside ``dht_nets`` (the
                # lab's own networks); no LSD multicast unless the caller's env turns it
                # on (namespace labs only)
                env={"SWARMHUB_LSD": "0", **(os.environ if env is None else env),
                     "SWARMHUB_DHT": "0", "SWARMHUB_DHT_LOCAL_ONLY": dht_nets},
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self._out.close()
            raise
        self.pid = self._popen.pid
        self._offset = 0
        self._partial = b""

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._popen.poll()
            if code is not None:
                self.returncode = code
                self._out.close()
        return self.returncode

    @property
    def alive(self) -> bool:
        return self.poll() is None

    def wait(self, timeout: float) -> int:
        """Exit code within ``timeout`` s, else :class:`LabError` (the process keeps running)."""
        try:
            self.returncode = self._popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise LabError(
                f"{self.name} still running after {timeout:.0f} s\n{self.tail()}"
            ) from exc
        self._out.close()
        return self.returncode

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM the process group (pgid == our child's PID), SIGKILL after ``grace`` s."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.returncode = self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.returncode = self._popen.wait(CMD_TIMEOUT)
            self._out.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # helpers it forked, if any survived
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL the process group at once (a crash, for fault injection); reap it."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.returncode = self._popen.wait(CMD_TIMEOUT)
            self._out.close()
        return self.returncode

    def new_lines(self) -> list[str]:
        """Complete output lines written since the last call."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [ln.decode("utf-8", "replace") for ln in lines]

    def wait_json(self, event: str, timeout: float) -> dict[str, Any]:
        """First JSON line with ``"event": event`` (bounded); fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            # polled before reading: what a process wrote before it exited is then all read
            exited = self.poll() is not None
            for line in self.new_lines():
                obj = _json_line(line)
                if obj is not None and obj.get("event") == event:
                    return obj
            if exited:
                raise LabError(
                    f"{self.name} exited ({self.returncode}) before '{event}'\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: no '{event}' within {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, n: int = 15) -> str:
        try:
            text = self.log.read_bytes()[-8192:].decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return f"$ {' '.join(self.args)}\n" + "\n".join(text.splitlines()[-n:])


def _json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    with contextlib.suppress(ValueError):
        obj = json.loads(line)
        if isinstance(obj, dict):
            return obj
    return None


# -- the lab ------------------------------------------------------------------------------------


class _Base:
    """What namespace and loopback labs share: processes, logs, signal-safe teardown."""

    shaped = False
    #: SWARMHUB_DHT_LOCAL_ONLY of the lab's processes: where their DHT nodes may send.
    dht_nets = "1"

    def __init__(
        self, hosts: int, up_bps: float, down_bps: float, latency_ms: float, log_dir: Path | None
    ) -> None:
        if not 1 <= hosts <= _MAX_HOSTS:
            raise LabError(f"hosts must be 1..{_MAX_HOSTS}, got {hosts}")
        self.hosts = hosts
        self.up_bps = self._rates(up_bps, hosts)
        self.down_bps = self._rates(down_bps, hosts)
        self.latency_ms = latency_ms
        self.notes: list[str] = []
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="swarmhub-lab-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[LabProc] = []
        self._old_handlers: dict[int, Any] = {}

    @staticmethod
    def _rates(value: float | Sequence[float], hosts: int) -> list[float]:
        rates = [float(value)] * hosts if isinstance(value, int | float) else list(value)
        if len(rates) != hosts or any(r <= 0 for r in rates):
            raise LabError(f"need {hosts} positive rates (bit/s), got {rates}")
        return rates

    def addr(self, host: int) -> str:
        raise NotImplementedError

    def _wrap(self, host: int, argv: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def run(
        self,
        host: int,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> LabProc:
        """Start ``argv`` on host ``host``; the lab stops it at teardown at the latest."""
        if not 0 <= host < self.hosts:
            raise LabError(f"no host {host} (the lab has {self.hosts})")
        name = name or f"h{host}-{Path(argv[0]).name}"
        return self._start(self._wrap(host, argv), name, env=env, cwd=cwd, host=host)

    def _start(
        self,
        argv: Sequence[str],
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        host: int | None = None,
    ) -> LabProc:
        proc = LabProc(
            argv,
            log_path=self.log_dir / f"{name}.log",
            name=name,
            env=env,
            cwd=cwd,
            dht_nets=self.dht_nets,
        )
        self.procs.append(proc)
        self._started(proc, host)
        log.debug("started %s (pid %d): %s", name, proc.pid, argv)
        return proc

    def _started(self, proc: LabProc, host: int | None) -> None:
        """Called for every process the lab started, with its host (None: the lab's own,
        the delay line); a subclass's hook."""

    def scheduling(self) -> str | None:
        """How the hosts' processes share the CPUs, for a run's notes (None: as the
        machine schedules them)."""
        return None

    def exec(self, host: int, argv: Sequence[str], timeout: float = CMD_TIMEOUT) -> str:
        """Run a short command on a host and return its stdout (bounded, checked)."""
        return _cmd(self._wrap(host, argv), timeout=timeout)

    def stop_processes(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    # -- signals: Ctrl-C is KeyboardInterrupt already; SIGTERM/SIGHUP become one too ---------
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    @staticmethod
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")


class Lab(_Base):
    """N hosts in network namespaces behind a bridge, with htb-shaped up and down links."""

    shaped = True
    dht_nets = f"127.0.0.0/8,{HOST_NET}.0/24"

    def __init__(
        self,
        prefix: str,
        hosts: int,
        up_bps: float | Sequence[float],
        down_bps: float | Sequence[float],
        latency_ms: float = 0.0,
        *,
        log_dir: Path | None = None,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise LabError(f"lab prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
        super().__init__(hosts, up_bps, down_bps, latency_ms, log_dir)  # type: ignore[arg-type]
        self.prefix = prefix
        self.bridge_ns = f"{prefix}-br"
        self.created: list[str] = []
        #: Round-trip times between hosts, measured once the links are up.
        self.rtt: RttStats | None = None
        self.delayline: LabProc | None = None
        #: The hosts' processes' niceness, and this thread's while the lab is up.
        self.nice = lab_nice()
        #: Host 0's (the source's): see the module docstring.
        self.source_nice = source_nice()
        self._own_nice: int | None = None
        self._own_group_nice: int | None = None

    def ns(self, host: int) -> str:
        return f"{self.prefix}-h{host}"

    def addr(self, host: int) -> str:
        return f"{HOST_NET}.{host + 1}"

    def host_nice(self, host: int) -> int:
        """The niceness ``host``'s processes run at (0: the machine's default)."""
        return self.source_nice if host == 0 else self.nice

    def _wrap(self, host: int, argv: Sequence[str]) -> list[str]:
        # `nice -n` adds to the niceness the child inherits from this thread
        want = self.host_nice(host)
        step = want - os.getpriority(os.PRIO_PROCESS, 0) if want or self.nice else 0
        nice = ["nice", "-n", str(step)] if step else []
        return ["ip", "netns", "exec", self.ns(host), *nice, *argv]

    def _started(self, proc: LabProc, host: int | None) -> None:
        want = self.nice if host is None else self.host_nice(host)
        if want:  # its own session's scheduling group (see the module docstring)
            _set_group_nice(proc.pid, want)

    def scheduling(self) -> str | None:
        if not self.nice and not self.source_nice:
            return None
        return (f"CPU priority: the source (host 0) at niceness {self.source_nice}, "
                f"the clients at {self.nice} ({SOURCE_NICE_ENV}, {LAB_NICE_ENV})")

    def _set_own_nice(self) -> None:
        """This thread (the runner's, which times the completions) and its session's
        scheduling group at the hosts' niceness while the lab is up; :meth:`close`
        restores both."""
        if self.nice and self._own_nice is None:
            self._own_nice = os.getpriority(os.PRIO_PROCESS, 0)
            self._own_group_nice = group_nice(os.getpid())
            os.setpriority(os.PRIO_PROCESS, 0, self.nice)
            if self._own_group_nice is not None:  # None: in no session group of its own
                _set_group_nice(os.getpid(), self.nice)

    # -- build / teardown ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        ok, why = netns_available()
        if not ok:
            raise LabError(why)
        self._install_signals()
        try:
            self.cleanup_orphans()
            self.cleanup_leftovers(self.prefix)  # a prefix given by name, or a dead PID's
            self._set_own_nice()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _cmd(["ip", "netns", "add", name])
        self.created.append(name)
        _cmd(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        br = self.bridge_ns
        binary = None
        if self.latency_ms > 0:
            ok, why = latency_support()
            if not ok:
                raise LabError(why)
            binary = build_delayline()
        self._add_ns(br)
        _cmd(["ip", "-n", br, "link", "add", "br0", "type", "bridge"])
        _cmd(["ip", "-n", br, "link", "set", "br0", "up"])
        for i in range(self.hosts):
            host = self.ns(i)
            self._add_ns(host)
            port = f"v{i}"
            _cmd(["ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                  "netns", host])  # fmt: skip
            _cmd(["ip", "-n", br, "link", "set", port, "master", "br0"])
            _cmd(["ip", "-n", br, "link", "set", port, "up"])
            _cmd(["ip", "-n", host, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0"])
            _cmd(["ip", "-n", host, "link", "set", "eth0", "up"])
            _cmd(["ip", "netns", "exec", host, "sysctl", "-qw",
                  f"net.ipv4.tcp_congestion_control={TCP_CC}",
                  f"net.ipv4.tcp_min_tso_segs={TCP_MIN_TSO_SEGS}"])  # fmt: skip
            _htb(host, "eth0", self.up_bps[i])
            _htb(br, port, self.down_bps[i])
        if binary is not None:
            self._start_delayline(binary)
        self.notes.append(
            f"TCP on every host: {TCP_CC}, at least {TCP_MIN_TSO_SEGS} segments per packet"
        )
        self._wait_links()
        self._check_rtt()
        log.info("lab %s: %d hosts up (%s)", self.prefix, self.hosts, "; ".join(self.notes))

    def _start_delayline(self, binary: Path) -> None:
        """The delay line first (it binds the queue), then the rule that feeds it: bridged
        IPv4 frames go through this namespace's FORWARD chain (br_netfilter)."""
        br = self.bridge_ns
        wrap = ["ip", "netns", "exec", br]
        self.delayline = self._start(
            [*wrap, *delayline_argv(binary, self.latency_ms)], "br-delayline"
        )
        ready = self.delayline.wait_json("ready", CMD_TIMEOUT)
        _cmd(["ip", "-n", br, "link", "set", "br0", "type", "bridge", "nf_call_iptables", "1"])
        _cmd([*wrap, *iptables_rule()])
        if not ready.get("realtime"):
            self.notes.append("the delay line runs without real-time priority (jitter likelier)")

    def measure_rtt(self, samples: int | None = None) -> RttStats | None:
        """Round-trip times between hosts (TCP connects to a closed port; see
        :func:`swarmhub.lab.latency.probe_plan`); None with fewer than two hosts."""
        import sys

        plan = probe_plan(self.hosts)
        if not plan:
            return None
        per_pair = samples or max(3, 40 // sum(len(t) for _, t in plan))
        by_pair: dict[str, list[float]] = {}
        for src, targets in plan:
            addrs = [self.addr(t) for t in targets]
            argv = [sys.executable, "-I", "-S", "-c", RTT_PROBE, str(per_pair), "0.01", *addrs]
            bound = CMD_TIMEOUT + 2.1 * per_pair * len(targets)
            for addr, ms in parse_probe(_cmd(self._wrap(src, argv), timeout=bound)).items():
                by_pair[f"{self.addr(src)}->{addr}"] = ms
        return RttStats.from_samples(by_pair)

    def _check_rtt(self) -> None:
        """Measure the RTT; with latency, refuse a lab whose RTT is not 2 x the latency
        (after a second try: a busy machine can delay a few samples)."""
        self.rtt = self.measure_rtt()
        if self.rtt is None:
            return
        problem = rtt_problem(self.rtt, self.latency_ms)
        if problem:
            self.rtt = self.measure_rtt()
            assert self.rtt is not None
            problem = rtt_problem(self.rtt, self.latency_ms)
        if problem:
            raise LabError(f"{problem}: the lab will not run with a latency it cannot hold")
        how = ""
        if self.latency_ms > 0:
            how = f"latency {self.latency_ms:g} ms one way (delay line on the bridge): "
        self.notes.append(f"{how}{self.rtt}")

    def _wait_links(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until host 0 reaches every other host: a TCP connect to a closed
        port is refused at once when the path works (no ping on these machines). 30 s: a hang
        guard only (at load ~49, 10 s was not enough for the bridge and the delay line)."""
        if self.hosts < 2:
            return
        import sys

        addrs = [self.addr(i) for i in range(1, self.hosts)]
        script = (
            "import socket,sys,time\n"
            f"pending=set({addrs!r}); deadline=time.monotonic()+{timeout}\n"
            "while pending and time.monotonic()<deadline:\n"
            " for a in sorted(pending):\n"
            "  s=socket.socket(); s.settimeout(0.5)\n"
            "  try: s.connect((a,9)); pending.discard(a)\n"
            "  except ConnectionRefusedError: pending.discard(a)\n"
            "  except OSError: time.sleep(0.05)\n"
            "  finally: s.close()\n"
            "print(' '.join(sorted(pending)))\n"
        )
        out = _cmd(
            self._wrap(0, [sys.executable, "-I", "-S", "-c", script]), timeout=timeout + CMD_TIMEOUT
        ).strip()
        if out:
            raise LabError(f"lab hosts {out} unreachable from {self.addr(0)} after {timeout:.0f} s")

    def close(self) -> None:
        """Stop every process, delete every namespace this lab created (their veths go too)."""
        try:
            self.stop_processes()
        finally:
            for name in reversed(self.created):
                _kill_ns_pids(name)
                with contextlib.suppress(LabError):
                    _cmd(["ip", "netns", "del", name], check=False)
            self.created.clear()
            if self._own_nice is not None:
                os.setpriority(os.PRIO_PROCESS, 0, self._own_nice)
                if self._own_group_nice is not None:
                    _set_group_nice(os.getpid(), self._own_group_nice)
                self._own_nice = None
            self._restore_signals()

    def link_stats(self, host: int) -> tuple[int, int]:
        """(bytes sent, bytes received) on the host's eth0, link level (headers included)."""
        return link_bytes(self.ns(host), "eth0")

    @staticmethod
    def cleanup_leftovers(prefix: str) -> list[str]:
        """Delete namespaces named ``<prefix>-br`` / ``<prefix>-h<i>`` left by a crashed run,
        killing the processes still inside them (the lab started those); return the names."""
        if not _PREFIX_RE.fullmatch(prefix):
            raise LabError(f"lab prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
        mine = re.compile(re.escape(prefix) + r"-(br|h[0-9]+)")
        return _delete_namespaces(lambda name: bool(mine.fullmatch(name)),
                                  "leftovers of an earlier lab run")

    @staticmethod
    def cleanup_orphans() -> list[str]:
        """Delete the namespaces of per-run prefixes (:func:`run_prefix`) whose owner
        process is gone (killing what still runs inside them); a live run's are kept.
        Return the names."""

        def orphan(name: str) -> bool:
            m = _RUN_NS_RE.fullmatch(name)
            return m is not None and not pid_alive(int(m.group(1), 16))

        return _delete_namespaces(orphan, "leftovers of ended lab runs")


def _delete_namespaces(chosen: Callable[[str], bool], what: str) -> list[str]:
    """Delete the namespaces ``chosen`` picks, killing the processes inside them first;
    return their names."""
    removed = []
    for line in _cmd(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.split() else ""
        if name and chosen(name):
            _kill_ns_pids(name)
            _cmd(["ip", "netns", "del", name], check=False)
            removed.append(name)
    if removed:
        log.warning("removed %s: %s", what, ", ".join(removed))
    return removed


def run_prefix(pid: int | None = None) -> str:
    """The namespace prefix of a lab run that names none: ``shrun<PID in hex>``.

    Why: one fixed default (``shlab``) made two labs started at once delete each other's
    namespaces as "leftovers"; a prefix per process cannot collide with a live run, and
    names its owner, so leftovers are removed only once that process is gone
    (:meth:`Lab.cleanup_orphans`)."""
    return f"{RUN_PREFIX}{os.getpid() if pid is None else pid:x}"




def _kill_ns_pids(ns: str) -> None:
    """SIGKILL processes inside a lab namespace (only ever one this lab named)."""
    with contextlib.suppress(LabError):
        for pid in _cmd(["ip", "netns", "pids", ns], check=False).split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def link_bytes(ns: str, dev: str) -> tuple[int, int]:
    """(tx bytes, rx bytes) of ``dev`` in namespace ``ns`` from the kernel's counters."""
    out = _cmd(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev])
    stats = json.loads(out)[0]["stats64"]
    return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])


class LoopbackLab(_Base):
    """The same interface on 127.0.0.1, unshaped: the scenario applies application-level
    limits instead (``--upload-limit``/``--download-limit``, ``curl --limit-rate``)."""

    def __init__(
        self,
        hosts: int,
        up_bps: float | Sequence[float],
        down_bps: float | Sequence[float],
        latency_ms: float = 0.0,
        *,
        log_dir: Path | None = None,
    ) -> None:
        if latency_ms > 0:  # refused before the log folder exists: nothing to clean up
            raise LabError(
                "--latency needs the namespace lab (root): loopback mode cannot delay packets"
            )
        super().__init__(hosts, up_bps, down_bps, latency_ms, log_dir)  # type: ignore[arg-type]
        self.notes.append(
            "loopback mode: no namespaces here; rates are application-level "
            "limits, not link shaping"
        )

    def addr(self, host: int) -> str:
        return "127.0.0.1"

    def run(
        self,
        host: int,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> LabProc:
        """As :meth:`_Base.run`, with LSD forced off: these hosts share the root namespace,
        where no lab process may multicast."""
        env = {**(os.environ if env is None else env), "SWARMHUB_LSD": "0"}
        return super().run(host, argv, name=name, env=env, cwd=cwd)

    def _wrap(self, host: int, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def __enter__(self) -> Self:
        self._install_signals()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stop_processes()
        finally:
            self._restore_signals()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
