"""How each lab mode starts its source (host 0) and its clients (hosts 1..N).

- ``cs``: host 0 runs a swarmhub hub whose ``--upload-limit`` is the source's rate; the
  clients run ``swarmhub get URL --mode cs`` (HTTP with resume), or curl with
  ``client="curl"``.
- ``p2p``: host 0 runs a tracker and ``swarmhub seed``; clients run ``swarmhub get`` on the
  torrent and keep seeding until the last one finishes. ``client="libtorrent"`` runs the
  same swarm with libtorrent peers (``tests/interop/ltpeer.py``) as seeder and clients:
  the reference swarm.
- ``hybrid``: host 0 runs the hub (tracker + web seed + first seeder); clients run
  ``swarmhub get URL --mode hybrid`` and keep seeding.

Our peers dial plaintext in the lab (``--encryption off``, :data:`LAB_ENCRYPTION`), as the
reference swarm's libtorrent peers do (``ltpeer.py``: ``out_enc_policy`` disabled): with
our default (``prefer``: encrypted first) every connection paid a Diffie-Hellman handshake
that libtorrent's did not (6 % of a peer's CPU at N=32 on 2 cores), so the two swarms were
not compared like with like. Outside the lab the default stays ``prefer``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import swarmhub
from swarmhub.lab.runner import Runner, wait_text
from swarmhub.lab.topology import LabError, LabProc, _json_line
from swarmhub.metainfo.model import Metainfo

__all__ = ["CLIENTS", "LAB_ENCRYPTION", "P2P", "CSCurl", "CSHub", "Hybrid", "LtP2P",
           "ltpeer_script", "runner_for"]

_START_TIMEOUT = 30.0
_PY = [sys.executable, "-u", "-m", "swarmhub"]
#: Our lab peers' ``--encryption``: plaintext, like the libtorrent reference swarm's.
LAB_ENCRYPTION = "off"

#: The peer implementations a mode can run with (the first is the default).
CLIENTS: dict[str, tuple[str, ...]] = {
    "cs": ("swarmhub", "curl"),
    "p2p": ("swarmhub", "libtorrent"),
    "hybrid": ("swarmhub",),
}


def _kib(bps: float) -> str:
    return str(max(1, int(bps / 8 / 1024)))


class _HubSource(Runner):
    """Host 0 runs a swarmhub hub and publishes the file to it."""

    def hub_upload_limit(self) -> bool:
        """Whether the hub's application cap is set to the source's rate."""
        return not self.netns

    def start_source(self) -> None:
        lab, res = self.lab, self.result
        host0 = lab.addr(0)
        http, peer = self.port("http"), self.port("hubpeer")
        self.hub = f"http://{host0}:{http}"
        data_dir = self.workdir / "hub"
        if data_dir.exists():
            import shutil

            shutil.rmtree(data_dir)
        argv = [
            *_PY,
            "hub",
            "--data",
            str(data_dir),
            "--listen",
            f"{host0}:{http}",
            "--peer-listen",
            f"{host0}:{peer}",
            "--public-url",
            self.hub,
            "--tracker-interval",
            "10",
        ]
        if host0.startswith("127."):  # loopback lab: every peer shares one address
            argv += ["--tracker-peers-per-ip", "0", "--tracker-announce-rate", "0"]
        if self.hub_upload_limit():
            argv += ["--upload-limit", _kib(res.source_up_bps)]
        argv += self.dht_args()  # the hub's seeder announces the file on the lab's DHT
        proc = lab.run(0, argv, name="h0-hub")
        self.source_procs.append(proc)
        out = wait_text(proc, "hub listening", _START_TIMEOUT)
        out = wait_text(proc, "admin token:", _START_TIMEOUT) if "admin token:" not in out else out
        m = re.search(r"admin token:\s*(\S+)", out)
        if m is None:
            raise LabError(f"the hub printed no admin token\n{proc.tail()}")
        published = lab.exec(
            0,
            [*_PY, "publish", str(self.data), "--hub", self.hub, "--token", m.group(1)],
            timeout=120,
        )
        urls = dict(re.findall(r"^(\w+):\s+(\S+)\s*$", published, re.MULTILINE))
        if "http" not in urls or "torrent" not in urls:
            raise LabError(f"publish printed no URLs:\n{published}")
        self.url, self.torrent_url = urls["http"], urls["torrent"]
        self.meta: Metainfo | None = None
        if self.fault is not None:
            self.torrent_meta()  # while the hub is alive: the runner counts pieces with it

    def torrent_meta(self) -> Metainfo | None:
        """The hub's torrent, fetched while the hub is alive (read once, then cached)."""
        from swarmhub.metainfo import read_torrent

        if self.meta is None:
            path = self.workdir / "hub.torrent"
            self.lab.exec(
                0, ["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(path), self.torrent_url]
            )
            self.meta = read_torrent(path)
        return self.meta

    def read_hub_counters(self) -> None:
        try:
            text = self.lab.exec(
                0,
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "5",
                    f"{self.hub}/metrics",
                ],
            )
        except LabError as exc:
            self.result.notes.append(f"could not read the hub's /metrics: {exc}")
            return
        values = dict(re.findall(r"^(swarmhub_\w+) ([0-9.eE+]+)$", text, re.MULTILINE))
        res = self.result
        res.hub_http_bytes = int(float(values.get("swarmhub_http_bytes_served_total", 0)))
        res.hub_seeder_bytes = int(float(values.get("swarmhub_seeder_uploaded_bytes_total", 0)))

    def app_source_upload(self) -> int:
        return self.result.hub_upload or 0

    def get_argv(self, host: int, mode: str) -> list[str]:
        res = self.result
        wait = str(int(self.deadline_s) + 5)
        argv = [
            *_PY,
            "get",
            self.url,
            "--mode",
            mode,
            "-o",
            str(self.out_dir(host)),
            "--json",
            "--listen",
            f"{self.lab.addr(host)}:{self.port('peer')}",
            "--timeout",
            wait,
        ]
        if mode != "cs":
            argv += ["--seed-after", wait, "--encryption", LAB_ENCRYPTION, *self.dht_args()]
        if not self.netns:
            argv += ["--upload-limit", _kib(res.up_bps), "--download-limit", _kib(res.down_bps)]
        return argv


class CSHub(_HubSource):
    """Client-server through our own client: ``swarmhub get URL --mode cs``."""

    json_progress = False  # cs clients print only their final line

    def hub_upload_limit(self) -> bool:
        return True

    def torrent_meta(self) -> Metainfo | None:
        return None  # no swarm: nothing can finish without the hub

    def start_client(self, host: int) -> LabProc:
        return self.lab.run(host, self.get_argv(host, "cs"), name=f"h{host}-get",
                            env=self.client_env())


class CSCurl(CSHub):
    """Client-server with curl as the client (the hub's origin, any HTTP client)."""

    gated = False  # curl cannot wait at the start gate: timed from its own start

    def start_client(self, host: int) -> LabProc:
        out = self.out_dir(host) / self.data.name
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


class Hybrid(_HubSource):
    """The hub as tracker + web seed + first seeder; clients in hybrid mode."""

    def start_client(self, host: int) -> LabProc:
        return self.lab.run(host, self.get_argv(host, "hybrid"), name=f"h{host}-get",
                            env=self.client_env())


class P2P(Runner):
    """Host 0 runs the tracker and the seeder; clients are ``swarmhub get`` peers."""

    def start_tracker(self) -> None:
        from swarmhub.metainfo import create_torrent, torrent_bytes

        lab = self.lab
        if self.dht:  # no tracker at all: a magnet link and the DHT
            self.meta = create_torrent(self.data, piece_length=self.piece_length)
            self.torrent = self.workdir / "payload.torrent"
            self.torrent.write_bytes(torrent_bytes(self.meta))
            return
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
        self.source_procs.append(tracker)
        # The seeder's first announce must find the tracker up: a failed one backs off.
        wait_text(tracker, "Running on", _START_TIMEOUT)
        self.meta = create_torrent(self.data, trackers=[[self.announce]],
                                   piece_length=self.piece_length)
        self.result.notes.append(f"pieces of {self.meta.piece_length // 1024} KiB")
        self.torrent = self.workdir / "payload.torrent"
        self.torrent.write_bytes(torrent_bytes(self.meta))

    def start_source(self) -> None:
        self.start_tracker()
        lab, res = self.lab, self.result
        argv = [
            *_PY,
            "seed",
            str(self.torrent),
            str(self.data),
            "--listen",
            f"{lab.addr(0)}:{self.port('seed') if self.netns else 0}",
            *(self.dht_args() if self.dht else ["--tracker", self.announce]),
            "--trust",
            "--encryption",
            LAB_ENCRYPTION,
        ]
        if not self.netns:
            argv += ["--upload-limit", _kib(res.source_up_bps)]
        self.seeder = lab.run(0, argv, name="h0-seed")
        self.source_procs.append(self.seeder)
        self.seeder.wait_json("listening", _START_TIMEOUT)

    def torrent_meta(self) -> Metainfo | None:
        return self.meta

    def start_client(self, host: int) -> LabProc:
        lab, res = self.lab, self.result
        listen = f"{lab.addr(host)}:{self.port('peer') if self.netns else 0}"
        wait = str(int(self.deadline_s) + 5)
        source = [self.magnet(), *self.dht_args()] if self.dht else [
            str(self.torrent), "--tracker", self.announce]
        argv = [
            *_PY,
            "get",
            *source,
            "-o",
            str(self.out_dir(host)),
            "--json",
            "--listen",
            listen,
            "--timeout",
            wait,
            "--seed-after",
            wait,
            "--encryption",
            LAB_ENCRYPTION,
        ]
        if not self.netns:
            argv += ["--upload-limit", _kib(res.up_bps), "--download-limit", _kib(res.down_bps)]
        return lab.run(host, argv, name=f"h{host}-get",
                            env=self.client_env())

    def app_source_upload(self) -> int:
        hosts = self.result.hosts
        return max(0, sum(h.bytes_down for h in hosts) - sum(h.bytes_up for h in hosts))


def ltpeer_script() -> Path:
    """``tests/interop/ltpeer.py`` of this source checkout, or :class:`LabError` saying why
    the reference swarm cannot run (an installed package has no tests folder)."""
    script = Path(swarmhub.__file__).resolve().parents[2] / "tests" / "interop" / "ltpeer.py"
    if not script.is_file():
        raise LabError(
            "the libtorrent reference swarm is unavailable: it runs tests/interop/ltpeer.py, "
            "which only a source checkout of swarmhub has (this one runs from "
            f"{Path(swarmhub.__file__).parent})"
        )
    if importlib.util.find_spec("libtorrent") is None:
        raise LabError("the libtorrent reference swarm needs the libtorrent Python package")
    return script


class LtP2P(P2P):
    """The p2p scenario with libtorrent peers (desktop defaults) as seeder and clients."""

    preset = "default"

    def _lt(self, host: int, save: Path, *extra: str) -> list[str]:
        res = self.result
        argv = [
            sys.executable,
            "-u",
            str(ltpeer_script()),
            "--torrent",
            str(self.torrent),
            "--save",
            str(save),
            "--listen",
            f"{self.lab.addr(host)}:{self.port('peer')}",
            "--timeout",
            str(int(self.deadline_s) + 30),
            "--preset",
            self.preset,
            *extra,
        ]
        if not self.netns:
            up = res.source_up_bps if host == 0 else res.up_bps
            argv += [
                "--upload-limit",
                str(int(up / 8)),
                "--download-limit",
                str(int(res.down_bps / 8)),
            ]
        return argv

    def start_source(self) -> None:
        ltpeer_script()
        self.start_tracker()
        argv = self._lt(0, self.data.parent, "--seed", "--seed-mode")
        self.seeder = self.lab.run(0, argv, name="h0-ltseed")
        self.source_procs.append(self.seeder)
        self.seeder.wait_json("ready", _START_TIMEOUT)

    def start_client(self, host: int) -> LabProc:
        return self.lab.run(host, self._lt(host, self.out_dir(host)), name=f"h{host}-lt",
                            env=self.client_env())

    def app_source_upload(self) -> int:
        uploaded = 0
        for line in self.seeder.new_lines():
            obj = _json_line(line)
            if obj is not None and "uploaded" in obj:
                uploaded = int(obj["uploaded"])
        return uploaded


def runner_for(mode: str, client: str) -> type[Runner]:
    """The runner class of ``mode`` with ``client``, or :class:`LabError` naming the choices."""
    if mode not in CLIENTS:
        raise LabError(f"unknown mode {mode!r}; choose one of {', '.join(CLIENTS)}")
    if client not in CLIENTS[mode]:
        raise LabError(f"mode {mode} runs with client {' or '.join(CLIENTS[mode])}, not {client!r}")
    table: dict[tuple[str, str], type[Runner]] = {
        ("cs", "swarmhub"): CSHub,
        ("cs", "curl"): CSCurl,
        ("p2p", "swarmhub"): P2P,
        ("p2p", "libtorrent"): LtP2P,
        ("hybrid", "swarmhub"): Hybrid,
    }
    return table[(mode, client)]
