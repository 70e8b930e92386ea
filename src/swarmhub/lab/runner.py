"""The machinery every lab scenario shares: start the source and the clients, follow their
JSON lines, time and count them, inject the fault, and say why a host failed.

Why one loop for every mode: the numbers compared across modes (completion times, bytes,
the fault's trigger point) must be taken the same way. A mode only says how to start its
source (host 0) and a client (hosts 1..N); see :mod:`swarmhub.lab.modes`.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmhub.lab.bytecode import compile_package
from swarmhub.lab.faults import Fault, SwarmProgress, should_fire, swarm_pieces
from swarmhub.lab.gate import GATE_ENV, GATE_EVENT
from swarmhub.lab.results import HostResult, ScenarioResult
from swarmhub.lab.topology import Lab, LabError, LabProc, LoopbackLab, _json_line, free_port
from swarmhub.metainfo.model import Metainfo

__all__ = ["GATE_TIMEOUT_S", "STALL_S", "TRACE_ENV", "EventSink", "Runner", "proc_cpu_s",
           "report_line", "wait_text"]

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]

_POLL_S = 0.05
#: After the hub was killed, receivers whose progress has not moved for this long fail.
STALL_S = 15.0
#: How long the clients may take to reach the start gate (16-32 interpreters importing at
#: once on two cores take a few seconds; a hang guard only).
GATE_TIMEOUT_S = 120.0
#: What a late joiner's deadline adds for finding the swarm on the DHT alone (queries to
#: the dead hub and to hosts not up yet time out before the lookup ends).
LATE_GRACE_S = 30.0
_NETNS_PORTS = {"tracker": 6969, "seed": 6881, "http": 8080, "peer": 6881, "hubpeer": 6881}


class Runner:
    """Run one mode on a lab: subclasses start the source and the clients."""

    #: Whether clients report progress in JSON lines (else it is read from file sizes).
    json_progress = True
    #: Whether clients wait at the start gate (:mod:`swarmhub.lab.gate`; curl cannot).
    gated = True

    def __init__(
        self,
        lab: Lab | LoopbackLab,
        result: ScenarioResult,
        data: Path,
        workdir: Path,
        deadline_s: float,
        sink: EventSink,
        fault: Fault | None = None,
        *,
        dht: bool = False,
        late: int = 0,
    ) -> None:
        self.lab = lab
        self.result = result
        self.data = data
        self.workdir = workdir
        self.deadline_s = deadline_s
        self.sink = sink
        self.fault = fault
        self.netns = isinstance(lab, Lab)
        self.n = result.peers
        #: Peers also find each other on a DHT of the lab's hosts (each node bootstraps
        #: from every host's port: no host is special, none is needed once joined).
        self.dht = dht
        #: Hosts n+1..n+late start once the fault struck, from a magnet link.
        self.late = late
        if (dht or late) and not self.netns:
            raise LabError("the DHT and late joiners need the namespace lab (root): on "
                           "loopback every node shares one address and unknown ports")
        if late and (fault is None or fault.kind != "kill-hub" or not dht):
            raise LabError("late joiners need --dht and a kill-hub fault to join after")
        #: The torrent's piece length (None: what ``swarmhub create`` picks); p2p only.
        self.piece_length: int | None = None
        #: Every process on host 0: what ``kill-hub`` kills.
        self.source_procs: list[LabProc] = []
        self.hub_dead = False
        #: Output lines read when the fault struck, not yet taken by :meth:`follow`.
        self._unread: dict[int, list[str]] = {}

    # -- what a mode provides ---------------------------------------------------------------
    def start_source(self) -> None:
        raise NotImplementedError

    def start_client(self, host: int) -> LabProc:
        raise NotImplementedError

    def torrent_meta(self) -> Metainfo | None:
        """The torrent the swarm shares (to count the pieces it holds), if any."""
        return None

    def read_hub_counters(self) -> None:
        """Record the hub's own upload counters while it is alive (hub modes)."""

    def app_source_upload(self) -> int:
        """Host 0's upload by application counters (loopback has no link counters)."""
        return sum(h.bytes_down for h in self.result.hosts)

    def magnet(self) -> str:
        """The swarm's magnet link (its torrent's trackers and web seeds, dead or not)."""
        from swarmhub.metainfo import make_magnet

        meta = self.torrent_meta()
        if meta is None:
            raise LabError(f"mode {self.result.mode} has no torrent to make a magnet link of")
        return make_magnet(meta)

    def dht_args(self) -> list[str]:
        """``--dht-bootstrap`` with every host's DHT port (the peer port), when on."""
        if not self.dht:
            return []
        hosts = range(self.lab.hosts)
        boot = ",".join(f"{self.lab.addr(i)}:{_NETNS_PORTS['peer']}" for i in hosts)
        return ["--dht-bootstrap", boot]

    def start_late_client(self, host: int) -> LabProc:
        """A peer that joins after the hub died: ``swarmhub get MAGNET`` on the DHT."""
        import sys

        wait = str(int(self.deadline_s + LATE_GRACE_S) + 5)
        argv = [sys.executable, "-u", "-m", "swarmhub", "get", self.magnet(), "-o",
                str(self.out_dir(host)), "--json", "--listen",
                f"{self.lab.addr(host)}:{self.port('peer')}", "--timeout", wait,
                "--seed-after", wait, *self.dht_args()]  # fmt: skip
        return self.lab.run(host, argv, name=f"h{host}-late")

    # -- helpers -------------------------------------------------------------------------------
    def gate_file(self) -> Path:
        return self.workdir / "start-gate"

    def client_env(self) -> dict[str, str] | None:
        """The environment of a client that waits at the start gate (None: inherit)."""
        if not self.gated:
            return None
        return {**os.environ, GATE_ENV: str(self.gate_file())}

    def open_gate(self, clients: dict[int, LabProc]) -> float:
        """Wait (bounded) until every client printed the gate line or exited, note each
        one's start-up CPU, then open the gate: the run's time zero, returned."""
        by_host = {h.host: h for h in self.result.hosts}
        waiting = set(clients)
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            for host in sorted(waiting):
                proc = clients[host]
                if proc.poll() is not None or _at_gate(proc):
                    by_host[host].cpu_start_s = proc_cpu_s(proc.pid)
                    waiting.discard(host)
            if waiting:
                time.sleep(_POLL_S)
        if waiting:
            log.warning("hosts %s did not reach the start gate in %.0f s", sorted(waiting),
                        GATE_TIMEOUT_S)
        self.gate_file().touch()
        self.result.gated = True
        self.result.gate_unix_s = round(time.time(), 3)
        return time.monotonic()

    def port(self, kind: str) -> int:
        return _NETNS_PORTS[kind] if self.netns else free_port()

    def out_dir(self, host: int) -> Path:
        return self.workdir / f"h{host}"

    def link_totals(self) -> list[tuple[int, int]]:
        lab = self.lab
        if isinstance(lab, Lab):
            return [lab.link_stats(i) for i in range(lab.hosts)]
        return []

    def file_progress(self, host: int) -> float:
        """Progress of a plain HTTP download: the size of its (part) file."""
        out = self.out_dir(host)
        size = 0
        for name in (self.data.name, f"{self.data.name}.part"):
            with contextlib.suppress(OSError):
                size = max(size, (out / name).stat().st_size)
        return min(1.0, size / self.result.size)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        res = self.result
        res.hosts = [HostResult(host=i, addr=self.lab.addr(i), late=i > self.n)
                     for i in range(1, self.n + self.late + 1)]
        for h in res.hosts:  # a fresh folder: no part file or data of an earlier run
            shutil.rmtree(self.out_dir(h.host), ignore_errors=True)
            self.out_dir(h.host).mkdir(parents=True)
        self.gate_file().unlink(missing_ok=True)
        compile_package()  # its processes read .pyc files, as an installed swarmhub's do
        self.start_source()
        # Link counters from before any client starts: an ungated client (curl) starts
        # downloading at once, and a gated one sends nothing before the gate anyway.
        before = self.link_totals()
        clients = {h.host: self.start_client(h.host) for h in res.hosts if not h.late}
        t_go = self.open_gate(clients) if self.gated else None
        self.sink({"event": "started", "mode": res.mode, "hosts": len(clients)})
        self.follow(clients, t_go)
        by_host = {h.host: h for h in res.hosts}
        for host, proc in clients.items():
            by_host[host].cpu_s = proc_cpu_s(proc.pid)
        if not self.hub_dead:
            self.read_hub_counters()
        after = self.link_totals()
        if before and after:
            for h in res.hosts:
                h.bytes_up = after[h.host][0] - before[h.host][0]
                h.bytes_down = after[h.host][1] - before[h.host][1]
            res.source_upload = after[0][0] - before[0][0]
            res.notes.append("bytes are link-level counters (TCP/IP headers included)")
        else:
            res.source_upload = self.app_source_upload()
            res.notes.append("bytes are application-level counters")
        if (sched := self.lab.scheduling()) is not None:
            res.notes.append(sched)

    def follow(self, clients: dict[int, LabProc], t_go: float | None = None) -> None:
        """Poll every client until all finished, failed, were killed or the deadline passed.

        Times count from ``t_go`` (the start gate's opening) when given, else from the
        first client's own start (its reported ``elapsed`` before its finish)."""
        res = self.result
        by_host = {h.host: h for h in res.hosts}
        meta = self.torrent_meta() if self.fault is not None else None
        state = SwarmProgress(res.size, meta.num_pieces if meta is not None else None)
        for host in clients:
            state.add_host(host)
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        t_begin = time.monotonic()
        fired_at: float | None = None
        moved_at, moved_sum = t_begin, 0.0
        # Late joiners get a whole deadline of their own from when they start, plus the
        # DHT's query timeouts to the dead hub: a hang guard, not a measure of speed.
        deadline_at = t_begin + self.deadline_s
        next_file_poll = t_begin
        pending = set(clients)
        trace = _Trace(self.workdir / "trace.jsonl", t_go if t_go is not None else t_begin)
        while pending:
            now = time.monotonic()
            file_poll = not self.json_progress and now >= next_file_poll
            if file_poll:
                next_file_poll = now + 0.25
            for host in sorted(pending):
                proc, h = clients[host], by_host[host]
                if file_poll:
                    state.report(host, have_bytes=int(self.file_progress(host) * res.size))
                early = self._unread.pop(host, [])  # read as the fault struck
                for i, line in enumerate(early + proc.new_lines()):
                    obj = _json_line(line)
                    if obj is None:
                        continue
                    trace.line(now, host, obj)
                    self.on_line(h, obj)
                    if obj.get("event") == "finished":
                        # a finish read as the fault struck was written before it struck
                        end = now
                        if i < len(early) and fired_at is not None:
                            end = min(now, fired_at)
                        ends[host] = end
                        starts[host] = end - float(obj.get("elapsed", end - proc.started))
                        h.ok = True
                        state.report(host, complete=True)
                        pending.discard(host)
                        self.sink(
                            {"event": "finished", "host": host, "elapsed": obj.get("elapsed")}
                        )
                    elif "progress" in obj:
                        report_line(state, host, obj, res.size)
                        self.sink({"event": "progress", "host": host, "progress": obj["progress"]})
                if host in pending and proc.poll() is not None:
                    h.error = f"exited with {proc.returncode}: {_last_words(proc)}"
                    pending.discard(host)
                    self.sink({"event": "failed", "host": host, "error": h.error})
            fault = self.fault
            # With late joiners to start, the fault fires even when every receiver finished
            # between two status lines (the full copy was never seen while one was pending).
            late_to_start = fired_at is None and any(h.late for h in res.hosts)
            if fault is not None and fired_at is None and (pending or late_to_start) and \
                    should_fire(fault, state):
                res.pieces_reported_at_fault = state.pieces_held()
                fired_at = self.inject(clients, pending)
                for host in fault.victims(sorted(clients)):
                    state.remove(host)
                for h in res.hosts:
                    if h.late:  # they know a magnet link; the hub that served it is gone
                        clients[h.host] = self.start_late_client(h.host)
                        state.add_host(h.host)
                        pending.add(h.host)
                        moved_at = now
                        deadline_at = max(deadline_at, now + self.deadline_s + LATE_GRACE_S)
                        self.sink({"event": "started", "host": h.host, "late": True})
            total = state.delivered()
            if total > moved_sum + 1e-9:
                moved_sum, moved_at = total, now
            if pending and self.hub_dead and now - moved_at > STALL_S and not state.can_finish():
                held = res.pieces_held_at_fault
                why = f"stalled for {STALL_S:.0f} s after the hub was killed" + (
                    f" (the swarm held {held}/{res.num_pieces} pieces then)"
                    if held is not None
                    else ""
                )
                for host in pending:
                    by_host[host].error = why
                    self.sink({"event": "failed", "host": host, "error": "stalled"})
                break
            dl = self.lab.delayline if isinstance(self.lab, Lab) else None
            if pending and dl is not None and dl.poll() is not None:
                # No bypass: without the delay line no packet crosses the bridge.
                why = f"the lab's delay line exited ({dl.returncode}): {_last_words(dl)}"
                for host in pending:
                    by_host[host].error = why
                    self.sink({"event": "failed", "host": host, "error": "delay line"})
                break
            if pending and now > deadline_at:
                for host in pending:
                    by_host[host].error = f"not done after {now - t_begin:.0f} s (deadline)"
                    self.sink({"event": "failed", "host": host, "error": "deadline"})
                break
            if pending:
                time.sleep(_POLL_S)
        trace.close()
        t0 = t_go if t_go is not None else min(starts.values()) if starts else t_begin
        for host, end in ends.items():
            by_host[host].completion_s = round(end - t0, 3)
        if fired_at is not None:
            res.fault_at_s = round(fired_at - t0, 3)
            if not res.downloading_at_fault and not any(h.late for h in res.hosts):
                res.notes.append(
                    f"{self.fault} struck after every receiver had finished: it tested nothing")
        elif self.fault is not None:
            res.notes.append(f"{self.fault} never struck" + (
                ": every receiver had finished by the time the runner saw its trigger hold "
                "(clients report once a second and as they finish)"
                if all(h.ok for h in res.hosts) else ""))

    def on_line(self, h: HostResult, obj: dict[str, Any]) -> None:
        if "downloaded" in obj:
            h.bytes_down = int(obj["downloaded"])
        if "uploaded" in obj:
            h.bytes_up = int(obj["uploaded"])
        if "webseed" in obj:
            h.webseed_bytes = int(obj["webseed"])

    # -- faults ------------------------------------------------------------------------------------
    def inject(self, clients: dict[int, LabProc], pending: set[int]) -> float:
        """Strike: return the moment the kills were done (the fault's time, after the
        hub's counters were read: on a loaded machine that read is not instant)."""
        fault, res = self.fault, self.result
        assert fault is not None
        if fault.kind == "kill-hub":
            self.read_hub_counters()
            for proc in self.source_procs:
                proc.kill()
            struck = time.monotonic()
            self.note_downloading(clients, pending)
            self.hub_dead = True
            self.sink({"event": "fault", "fault": str(fault)})
            meta = self.torrent_meta()
            if meta is not None:
                folders = [self.out_dir(h.host) for h in res.hosts]
                try:
                    res.pieces_held_at_fault, res.num_pieces = swarm_pieces(meta, folders)
                except Exception as exc:  # an unreadable folder must not abort the run
                    log.warning("could not count the swarm's pieces: %s", exc)
            held, total = res.pieces_held_at_fault, res.num_pieces
            if held is None or total is None:
                res.notes.append(f"{fault}: host 0 killed; no swarm to finish from")
            elif held == total:
                res.notes.append(
                    f"{fault}: host 0 killed; every piece ({total}) had left it, so the "
                    "swarm can finish alone"
                )
            else:
                res.notes.append(
                    f"{fault}: host 0 killed while the swarm held only {held}/{total} "
                    "pieces: no one can finish without it"
                )
            return struck
        victims = fault.victims(sorted(clients))
        by_host = {h.host: h for h in res.hosts}
        for host in victims:
            clients[host].kill()
            h = by_host[host]
            h.killed, h.ok = True, False
            h.error = f"killed by the fault {fault}"
            pending.discard(host)
            self.sink({"event": "failed", "host": host, "error": "killed"})
        struck = time.monotonic()
        self.note_downloading(clients, pending)
        res.notes.append(f"{fault}: killed hosts {', '.join(map(str, victims))}")
        return struck

    def note_downloading(self, clients: dict[int, LabProc], pending: set[int]) -> None:
        """Record the receivers still downloading when the fault struck: read at once what
        each one not yet seen to finish has written (kept for :meth:`follow`); a "finished"
        line there was written before the kill.

        Why: the runner sees a client's state only through its status lines (one a second,
        and one as it finishes), and on a loaded machine it may read them late. A fault
        that fires after every receiver finished proves nothing; this says so, instead of
        counting those finishes as after the fault."""
        downloading = []
        for host in sorted(pending):
            lines = self._unread.setdefault(host, [])
            lines.extend(clients[host].new_lines())
            if not any(_is_finished(ln) for ln in lines):
                downloading.append(host)
        self.result.downloading_at_fault = downloading


#: Set (to anything) to write every client status line, with the seconds since the start
#: gate and the host, to ``<workdir>/trace.jsonl`` (``lab run --keep`` keeps it): a run's
#: progress per host over time, the web seed's share included.
TRACE_ENV = "SWARMHUB_LAB_TRACE"


class _Trace:
    """The status lines of one run as JSON lines (only with :data:`TRACE_ENV` set)."""

    def __init__(self, path: Path, t0: float) -> None:
        self._t0 = t0
        self._file = open(path, "w") if os.environ.get(TRACE_ENV) else None  # noqa: SIM115

    def line(self, now: float, host: int, obj: dict[str, Any]) -> None:
        if self._file is not None:
            obj = {k: v for k, v in obj.items() if k != "bitfield"}
            self._file.write(json.dumps({"t": round(now - self._t0, 3), "host": host, **obj})
                             + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def report_line(state: SwarmProgress, host: int, obj: dict[str, Any], size: int) -> None:
    """Feed one client status line to ``state``: verified bytes (``have_bytes``, else the
    progress fraction) and the hex bitfield of verified pieces when the client sends one."""
    have = obj.get("have_bytes")
    have_bytes = int(have) if isinstance(have, int) else int(float(obj["progress"]) * size)
    bitfield = None
    if isinstance(obj.get("bitfield"), str):
        try:
            bitfield = binascii.unhexlify(obj["bitfield"])
        except (binascii.Error, ValueError):
            log.warning("host %d sent an unreadable bitfield", host)
    state.report(host, have_bytes=have_bytes, bitfield=bitfield)


def _is_finished(line: str) -> bool:
    obj = _json_line(line)
    return obj is not None and obj.get("event") == "finished"


def _at_gate(proc: LabProc) -> bool:
    """Whether ``proc`` printed the start gate's line (read from its log, not consumed)."""
    try:
        text = proc.log.read_text("utf-8", "replace")
    except FileNotFoundError:
        return False
    if GATE_EVENT not in text:
        return False
    return any((obj := _json_line(ln)) is not None and obj.get("event") == GATE_EVENT
               for ln in text.splitlines())


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a live process has used so far, from /proc; None when
    it is gone or there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _last_words(proc: LabProc) -> str:
    """The last meaningful output line (rich tracebacks draw boxes: drop the frames)."""
    lines = [ln.strip(" │╭╮╰╯─") for ln in proc.tail(12).splitlines()[1:]]
    lines = [ln for ln in lines if ln and not ln.startswith("{")]
    return lines[-1] if lines else "(no output)"


def wait_text(proc: LabProc, text: str, timeout: float) -> str:
    """Wait (bounded) until ``text`` appears in the process's output; return the output."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            out = proc.log.read_text("utf-8", "replace")
            if text in out:
                return out
        if proc.poll() is not None:
            raise LabError(f"{proc.name} exited ({proc.returncode})\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"{proc.name}: no {text!r} within {timeout:.0f} s\n{proc.tail()}")
        time.sleep(0.02)
