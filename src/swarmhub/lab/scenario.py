"""One lab scenario: distribute one file from host 0 to N hosts, measure, compare to the bound.

Why: the lab's claim ("p2p scales, client-server overloads") is only as good as the runs
behind it, so a scenario starts real processes on emulated hosts, times each host from the
moment the first client could start, verifies every byte, and always cleans up.

- ``cs``: host 0 serves the file over HTTP (the hub's origin app); hosts 1..N fetch it
  with curl.
- ``p2p``: host 0 runs the tracker and a ``swarmhub seed``; hosts 1..N run ``swarmhub get``
  and keep seeding (``--seed-after``) until the last one finishes.
- ``hybrid``: not yet available (needs the hub's web seed and the peers' hybrid mode).

Every scenario has a global deadline (5 x bound + 30 s); a host not done by then is
reported failed and every process is killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from swarmhub.lab.bounds import cs_bound, p2p_bound
from swarmhub.lab.topology import (
    Lab,
    LabError,
    LabProc,
    LoopbackLab,
    _json_line,
    free_port,
    netns_available,
)

__all__ = [
    "MODES",
    "HostResult",
    "ScenarioResult",
    "make_data",
    "run_scenario",
]

log = logging.getLogger(__name__)

Mode = Literal["cs", "p2p", "hybrid"]
MODES: tuple[str, ...] = ("cs", "p2p", "hybrid")
_POLL_S = 0.05
_START_TIMEOUT = 30.0
_NETNS_PORTS = {"tracker": 6969, "seed": 6881, "http": 8080, "peer": 6881}


@dataclass
class HostResult:
    """One receiving host: when it finished (s from the scenario's start), bytes it moved."""

    host: int
    addr: str
    completion_s: float | None = None
    bytes_down: int = 0
    bytes_up: int = 0
    ok: bool = False
    error: str = ""


@dataclass
class ScenarioResult:
    """Everything a report needs about one run. Rates in bit/s, sizes in bytes, times in s."""

    mode: str
    client: str
    peers: int
    size: int
    up_bps: float
    down_bps: float
    source_up_bps: float
    latency_ms: float
    shaped: bool
    bound_s: float
    hosts: list[HostResult] = field(default_factory=list)
    source_upload: int = 0
    last_completion_s: float | None = None
    ratio: float | None = None
    ok: bool = False
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        hosts = [HostResult(**h) for h in data.get("hosts", [])]
        return cls(**{**data, "hosts": hosts})


def make_data(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes (incompressible, reproducible); return the SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 20))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def bound_for(
    mode: str, peers: int, size: int, up_bps: float, down_bps: float, source_up_bps: float
) -> float:
    """The theoretical minimum for ``mode`` (hybrid and p2p share the peer-to-peer bound)."""
    if mode == "cs":
        return cs_bound(size, source_up_bps, [down_bps] * peers)
    return p2p_bound(size, source_up_bps, [down_bps] * peers, [up_bps] * peers)


EventSink = Callable[[dict[str, Any]], None]


def run_scenario(
    mode: str,
    peers: int,
    size: int,
    up_bps: float,
    down_bps: float,
    source_up_bps: float | None = None,
    latency_ms: float = 0.0,
    client: str = "swarmhub",
    fault: str | None = None,
    workdir: Path | None = None,
    on_event: EventSink | None = None,
    *,
    prefix: str = "shlab",
    use_netns: bool | None = None,
    timeout: float | None = None,
) -> ScenarioResult:
    """Run one scenario and return its result (``ok`` False with an error per failed host
    rather than raising; :class:`LabError` only when the lab itself cannot run)."""
    if mode not in MODES:
        raise LabError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "hybrid":
        raise LabError(
            "hybrid mode is not yet available: it needs the hub's web seed and the "
            "peers' hybrid mode (issue 4 follow-up)"
        )
    if client != "swarmhub":
        raise LabError(f"client {client!r} is not yet available in the lab (only 'swarmhub')")
    if fault:
        raise LabError(f"fault injection ({fault!r}) is not yet available in the lab")
    if peers < 1 or size < 1:
        raise LabError("need at least one peer and a non-empty file")
    source_up = float(source_up_bps or up_bps)
    bound = bound_for(mode, peers, size, up_bps, down_bps, source_up)
    deadline_s = timeout if timeout is not None else 5 * bound + 30
    sink = on_event or (lambda _e: None)
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix=f"swarmhub-lab-{mode}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if use_netns is None:
        use_netns = netns_available()[0]
    result = ScenarioResult(
        mode=mode,
        client=client,
        peers=peers,
        size=size,
        up_bps=up_bps,
        down_bps=down_bps,
        source_up_bps=source_up,
        latency_ms=latency_ms,
        shaped=use_netns,
        bound_s=bound,
    )
    data = workdir / "source" / "payload.bin"
    if not data.exists() or data.stat().st_size != size:
        make_data(data, size)
    digest = _sha256(data)
    ups = [source_up] + [float(up_bps)] * peers
    downs = [float(down_bps)] * (peers + 1)
    lab: Lab | LoopbackLab
    if use_netns:
        lab = Lab(prefix, peers + 1, ups, downs, latency_ms, log_dir=workdir / "logs")
    else:
        why = netns_available()[1]
        lab = LoopbackLab(peers + 1, ups, downs, latency_ms, log_dir=workdir / "logs")
        if why:
            lab.notes.append(f"why loopback: {why}")
    started = time.monotonic()
    with lab:
        runner = _CS if mode == "cs" else _P2P
        runner(lab, result, data, workdir, deadline_s, sink).run()
        result.notes.extend(lab.notes)
    result.wall_s = time.monotonic() - started
    for h in result.hosts:
        out = workdir / f"h{h.host}" / data.name
        if h.ok and (not out.exists() or _sha256(out) != digest):
            h.ok = False
            h.error = "downloaded bytes differ from the source"
    done = [h.completion_s for h in result.hosts if h.ok and h.completion_s is not None]
    result.ok = len(done) == peers
    if result.ok:
        result.last_completion_s = max(done)
        result.ratio = result.last_completion_s / bound
    sink({"event": "scenario-done", "mode": mode, "ok": result.ok, "ratio": result.ratio})
    return result


class _Runner:
    """Shared machinery: start clients, follow their JSON lines, time and count them."""

    def __init__(
        self,
        lab: Lab | LoopbackLab,
        result: ScenarioResult,
        data: Path,
        workdir: Path,
        deadline_s: float,
        sink: EventSink,
    ) -> None:
        self.lab = lab
        self.result = result
        self.data = data
        self.workdir = workdir
        self.deadline_s = deadline_s
        self.sink = sink
        self.netns = isinstance(lab, Lab)
        self.n = result.peers

    def port(self, kind: str) -> int:
        return _NETNS_PORTS[kind] if self.netns else free_port()

    def link_totals(self) -> list[tuple[int, int]]:
        lab = self.lab
        if isinstance(lab, Lab):
            return [lab.link_stats(i) for i in range(lab.hosts)]
        return []

    def start_source(self) -> None:
        raise NotImplementedError

    def start_client(self, host: int) -> LabProc:
        raise NotImplementedError

    def run(self) -> None:
        res = self.result
        res.hosts = [HostResult(host=i, addr=self.lab.addr(i)) for i in range(1, self.n + 1)]
        self.start_source()
        before = self.link_totals()
        clients = {h.host: self.start_client(h.host) for h in res.hosts}
        self.sink({"event": "started", "mode": res.mode, "hosts": len(clients)})
        self.follow(clients)
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

    def app_source_upload(self) -> int:
        return sum(h.bytes_down for h in self.result.hosts)

    def follow(self, clients: dict[int, LabProc]) -> None:
        """Poll every client's output until all finished or the deadline passed."""
        res = self.result
        by_host = {h.host: h for h in res.hosts}
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        t_begin = time.monotonic()
        pending = set(clients)
        while pending:
            now = time.monotonic()
            for host in sorted(pending):
                proc, h = clients[host], by_host[host]
                for line in proc.new_lines():
                    obj = _json_line(line)
                    if obj is None:
                        continue
                    self.on_line(h, obj)
                    if obj.get("event") == "finished":
                        ends[host] = now
                        starts[host] = now - float(obj.get("elapsed", now - proc.started))
                        h.ok = True
                        pending.discard(host)
                        self.sink(
                            {"event": "finished", "host": host, "elapsed": obj.get("elapsed")}
                        )
                    elif "progress" in obj:
                        self.sink({"event": "progress", "host": host, "progress": obj["progress"]})
                if host in pending and proc.poll() is not None:
                    h.error = f"exited with {proc.returncode}: {proc.tail(3)}"
                    pending.discard(host)
                    self.sink({"event": "failed", "host": host, "error": h.error})
            if pending and now - t_begin > self.deadline_s:
                for host in pending:
                    by_host[host].error = f"not done after {self.deadline_s:.0f} s (deadline)"
                    self.sink({"event": "failed", "host": host, "error": "deadline"})
                break
            if pending:
                time.sleep(_POLL_S)
        if starts:
            t0 = min(starts.values())
            for host, end in ends.items():
                by_host[host].completion_s = round(end - t0, 3)

    def on_line(self, h: HostResult, obj: dict[str, Any]) -> None:
        if "downloaded" in obj:
            h.bytes_down = int(obj["downloaded"])
        if "uploaded" in obj:
            h.bytes_up = int(obj["uploaded"])


class _CS(_Runner):
    """Host 0 serves the file over HTTP; clients fetch it with curl."""

    def start_source(self) -> None:
        lab, port = self.lab, self.port("http")
        argv = [
            sys.executable,
            "-u",
            "-m",
            "swarmhub.lab.scenario",
            "serve",
            str(self.data.parent),
            f"{lab.addr(0)}:{port}",
        ]
        if not self.netns:
            argv.append(str(int(self.result.source_up_bps / 8)))
        proc = lab.run(0, argv, name="h0-origin")
        listening = proc.wait_json("listening", _START_TIMEOUT)
        self.url = f"http://{lab.addr(0)}:{listening['port']}/{self.data.name}"

    def start_client(self, host: int) -> LabProc:
        out = self.workdir / f"h{host}" / self.data.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        fmt = (
            '{"event": "finished", "elapsed": %{time_total}, '
            '"downloaded": %{size_download}, "code": %{http_code}}\\n'
        )
        argv = [
            "curl",
            "-sS",
            "--fail",
            "--noproxy",
            "*",
            "-o",
            str(out),
            "--max-time",
            str(int(self.deadline_s) + 5),
            "-w",
            fmt,
            self.url,
        ]
        if not self.netns:
            argv[1:1] = ["--limit-rate", str(int(self.result.down_bps / 8))]
        return self.lab.run(host, argv, name=f"h{host}-curl")


class _P2P(_Runner):
    """Host 0 runs the tracker and the seeder; clients are ``swarmhub get`` peers."""

    def start_source(self) -> None:
        from swarmhub.metainfo import create_torrent, torrent_bytes

        lab, res = self.lab, self.result
        tport = self.port("tracker")
        self.announce = f"http://{lab.addr(0)}:{tport}/announce"
        tracker = lab.run(
            0,
            [
                sys.executable,
                "-u",
                "-m",
                "swarmhub.hub.tracker",
                "--listen",
                f"{lab.addr(0)}:{tport}",
                "--interval",
                "2",
                "--min-interval",
                "1",
            ],
            name="h0-tracker",
        )
        # The seeder's first announce must find the tracker up: a failed one backs off.
        _wait_text(tracker, "Running on", _START_TIMEOUT)
        meta = create_torrent(self.data, trackers=[[self.announce]])
        self.torrent = self.workdir / "payload.torrent"
        self.torrent.write_bytes(torrent_bytes(meta))
        argv = [
            sys.executable,
            "-u",
            "-m",
            "swarmhub",
            "seed",
            str(self.torrent),
            str(self.data),
            "--listen",
            f"{lab.addr(0)}:{self.port('seed') if self.netns else 0}",
            "--tracker",
            self.announce,
            "--trust",
        ]
        if not self.netns:
            argv += ["--upload-limit", str(max(1, int(res.source_up_bps / 8 / 1024)))]
        self.seeder = lab.run(0, argv, name="h0-seed")
        self.seeder.wait_json("listening", _START_TIMEOUT)

    def start_client(self, host: int) -> LabProc:
        lab, res = self.lab, self.result
        out = self.workdir / f"h{host}"
        (out / self.data.name).unlink(missing_ok=True)
        listen = f"{lab.addr(host)}:{self.port('peer') if self.netns else 0}"
        argv = [
            sys.executable,
            "-u",
            "-m",
            "swarmhub",
            "get",
            str(self.torrent),
            "-o",
            str(out),
            "--tracker",
            self.announce,
            "--json",
            "--listen",
            listen,
            "--timeout",
            str(int(self.deadline_s) + 5),
            "--seed-after",
            str(int(self.deadline_s) + 5),
        ]
        if not self.netns:
            argv += [
                "--upload-limit",
                str(max(1, int(res.up_bps / 8 / 1024))),
                "--download-limit",
                str(max(1, int(res.down_bps / 8 / 1024))),
            ]
        return lab.run(host, argv, name=f"h{host}-get")

    def app_source_upload(self) -> int:
        hosts = self.result.hosts
        return max(0, sum(h.bytes_down for h in hosts) - sum(h.bytes_up for h in hosts))


def _wait_text(proc: LabProc, text: str, timeout: float) -> None:
    """Wait (bounded) until ``text`` appears in the process's output."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if text in proc.log.read_text("utf-8", "replace"):
                return
        if proc.poll() is not None:
            raise LabError(f"{proc.name} exited ({proc.returncode})\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise LabError(f"{proc.name}: no {text!r} within {timeout:.0f} s\n{proc.tail()}")
        time.sleep(0.02)


# -- the cs origin process: `python -m swarmhub.lab.scenario serve ROOT HOST:PORT [RATE]` -----


def _serve_main(argv: list[str]) -> None:
    """Serve ROOT with the hub's origin app; RATE (bytes/s) caps the aggregate upload."""
    import asyncio
    import json

    from aiohttp import web

    from swarmhub.hub.origin import OriginLimiter, make_static_app

    root, hostport = Path(argv[0]), argv[1]
    rate = float(argv[2]) if len(argv) > 2 else 0.0
    host, _, port = hostport.rpartition(":")
    limiter = OriginLimiter(upload_rate=rate)

    async def main() -> None:
        runner = web.AppRunner(make_static_app(root, limiter=limiter), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        actual = sockets[0].getsockname()[1] if sockets else int(port)
        print(json.dumps({"event": "listening", "port": actual}), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            print(json.dumps({"event": "served", "bytes": limiter.bytes_served}), flush=True)
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        _serve_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m swarmhub.lab.scenario serve ROOT HOST:PORT [BYTES_PER_S]")
