"""What a netns lab run's packets and peer syscalls are (issue 9: at N=32 the 2-core machine
is CPU-bound, and every packet costs the delay line, softirq and a wake-up): runs one
`swarmhub lab run` (``--keep``) and counts, per mode,

- the packets through the delay line (its own counters: every bridged packet, as the
  kernel hands it over: a GSO burst of several MSS is one) and its wake-ups,
- per client peer process (median): read-type and write-type syscalls (/proc/PID/io
  ``syscr``/``syscw``: socket reads and writes, disk pwrites, eventfd wake-ups) and user /
  system CPU-s,
- per host, the TCP counters of its namespace (/proc/PID/net/snmp, netstat): segments in
  and out, pure ACKs received, data segments sent (``TCPOrigDataSent``, counted in MSS),
- on the bridge ports of ``--ports`` hosts (a packet socket in the bridge namespace; the
  lab stops it with each mode, so it is started again for the next): each packet by
  direction as a pure ACK, a small one (payload <= 200 bytes: control messages) or a big
  one, and the small ones by the set of BitTorrent message ids they carry (4 Have, 6
  Request, 2 Interested, 3 NotInterested, 0 Choke, 1 Unchoke, 20 extended ...).

The hosts' downloaded data are deleted after the run (the logs stay). Needs root (the lab
does)::

    sudo .venv/bin/python bench/lab_packets.py --peers 32 \\
        --modes p2p,hybrid --prefix lpk --out /tmp/lpk [--ports 1,2] [-- extra lab run args]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (loaded by path in tests)
from labbench import Poller, add_lab_run_options, finish, lab_namespaces, run_lab

#: payloads up to this many bytes are counted as "small" (control messages)
SMALL = 200


def classify(frame: bytes, outgoing: bool) -> tuple[str, str, str | None]:
    """(direction, kind, message ids) of one Ethernet frame: kind is "ack" (no payload),
    "small" or "big", "" for anything but IPv4 TCP; ids (small only) is the sorted set of
    the BitTorrent message ids in the payload ("-1" for a keep-alive or a cut frame)."""
    direction = "to" if outgoing else "from"
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return direction, "", None
    ihl = (frame[14] & 15) * 4
    total = struct.unpack_from(">H", frame, 16)[0]
    tcp = 14 + ihl
    if len(frame) < tcp + 13:
        return direction, "", None
    doff = (frame[tcp + 12] >> 4) * 4
    payload = total - ihl - doff
    if payload <= 0:
        return direction, "ack", None
    if payload > SMALL:
        return direction, "big", None
    start = q = tcp + doff
    ids: set[int] = set()
    while q + 4 <= min(start + payload, len(frame)):
        n = struct.unpack_from(">I", frame, q)[0]
        ids.add(frame[q + 4] if n and q + 4 < len(frame) else -1)
        q += 4 + n
    return direction, "small", ",".join(str(i) for i in sorted(ids))


def sniff(iface: str, out: str) -> None:
    """Count the packets on ``iface`` (run inside the bridge namespace) into ``out`` (JSON,
    rewritten every second: the lab kills us without warning at the mode's end)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((iface, 0))
    s.settimeout(0.5)
    counts: collections.Counter[str] = collections.Counter()
    last = time.monotonic()
    while True:
        try:
            frame, addr = s.recvfrom(256)
        except TimeoutError:
            frame = b""
        except OSError:
            break  # the port is gone
        if frame:
            direction, kind, ids = classify(frame, addr[2] == socket.PACKET_OUTGOING)
            if kind:
                counts[f"{direction}:{kind}"] += 1
            if ids is not None:
                counts[f"{direction}:ids {ids}"] += 1
        if time.monotonic() - last > 1:
            last = time.monotonic()
            Path(out + ".tmp").write_text(json.dumps(counts))
            os.replace(out + ".tmp", out)
    Path(out).write_text(json.dumps(counts))


def _tcp_counters(pid: str) -> dict[str, int]:
    got: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()
        for keys, values in zip(lines[::2], lines[1::2], strict=False):
            k, v = keys.split(), values.split()
            if k[0] in ("Tcp:", "TcpExt:"):
                got.update({k[0][:-1] + a: int(b) for a, b in zip(k[1:], v[1:], strict=False)})
    return got


class Sampler(Poller):
    """Every 0.5 s: each process in the lab's namespaces (syscalls, CPU, its namespace's TCP
    counters); keeps the last look at each; (re)starts the port sniffers."""

    def __init__(self, prefix: str, ports: list[int], out: Path) -> None:
        super().__init__()
        self.prefix, self.ports, self.out = prefix, ports, out
        self.procs: dict[str, dict[str, Any]] = {}
        self.sniffers: dict[int, subprocess.Popen[bytes]] = {}
        self.sniffed: dict[int, list[str]] = {p: [] for p in ports}

    def __exit__(self, *exc: object) -> None:
        super().__exit__()
        for proc in self.sniffers.values():
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def _sniffers(self) -> None:
        br = f"{self.prefix}-br"
        for port in self.ports:
            proc = self.sniffers.get(port)
            if proc is not None and proc.poll() is None:
                continue
            if subprocess.run(["ip", "-n", br, "link", "show", f"v{port}"], check=False,
                              capture_output=True).returncode:
                continue
            out = str(self.out / f"port{port}-{len(self.sniffed[port])}.json")
            self.sniffed[port].append(out)
            self.sniffers[port] = subprocess.Popen(
                ["ip", "netns", "exec", br, sys.executable, __file__, "--sniff", f"v{port}", out])

    def poll(self) -> None:
        hosts = lab_namespaces(self.prefix)
        if not hosts:
            return
        self._sniffers()
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                host = hosts.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
                if host is None:
                    continue
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                io = dict(line.split(": ") for line in
                          Path(f"/proc/{pid}/io").read_text().splitlines())
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                tick = os.sysconf("SC_CLK_TCK")
                self.procs[pid] = {
                    "host": host, "cmd": cmd.decode(errors="replace"),
                    "syscr": int(io["syscr"]), "syscw": int(io["syscw"]),
                    "user": int(stat[11]) / tick, "system": int(stat[12]) / tick,
                    "tcp": _tcp_counters(pid)}
            except (OSError, ValueError, KeyError, IndexError):
                continue


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def report(s: Sampler, out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    got = []
    before: dict[str, dict[str, int]] = {}  # host -> TCP counters at the last mode's end
    for i, r in enumerate(results):
        mode = r["mode"]
        tag = f"{mode}-n{r['peers']}"
        procs = [p for p in s.procs.values() if f"/{tag}/" in p["cmd"]]
        clients = [p for p in procs if " get " in p["cmd"]]
        line: dict[str, Any] = {"mode": mode, "ratio": r.get("ratio"),
                                "client_cpu_s": _median([h["cpu_s"] for h in r["hosts"]
                                                         if h.get("cpu_s") is not None])}
        for key in ("syscr", "syscw", "user", "system"):
            line[f"client_{key}"] = _median([p[key] for p in clients])
        hosts: dict[str, dict[str, int]] = {}
        for p in procs:  # the namespace's counters as the mode's processes last saw them
            seen = hosts.get(p["host"])
            if seen is None or p["tcp"].get("TcpOutSegs", 0) > seen.get("TcpOutSegs", 0):
                hosts[p["host"]] = p["tcp"]
        for key in ("TcpInSegs", "TcpOutSegs", "TcpExtTCPPureAcks", "TcpExtTCPOrigDataSent",
                    "TcpRetransSegs"):
            line[key] = sum(c.get(key, 0) - before.get(h, {}).get(key, 0)
                            for h, c in hosts.items() if h != "br")
        before.update(hosts)
        logs = glob.glob(str(out / "work" / tag / "logs" / "br-delayline.log"))
        for path in logs:
            for text in Path(path).read_text().splitlines():
                if '"stopped"' in text:
                    dl = json.loads(text)
                    line["delayline_packets"], line["delayline_wakes"] = dl["packets"], dl["wakes"]
        for port, files in s.sniffed.items():
            if i < len(files) and Path(files[i]).exists():
                line[f"port{port}"] = json.loads(Path(files[i]).read_text())
        got.append(line)
    return got


def _print(lines: list[dict[str, Any]]) -> None:
    for line in lines:
        flat = {k: v for k, v in line.items() if not k.startswith("port")}
        print(" ".join(f"{k}={v}" for k, v in flat.items()))
        for k, v in line.items():
            if k.startswith("port"):
                kinds = {a: b for a, b in sorted(v.items()) if " " not in a}
                ids = sorted(((b, a) for a, b in v.items() if " " in a), reverse=True)[:12]
                print(f"  {k} (to = into the host): {kinds}")
                print("    small by message ids:", ", ".join(f"{a} {b}" for b, a in ids))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--sniff":
        sniff(sys.argv[2], sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_lab_run_options(p, prefix="lpk")
    p.add_argument("--ports", default="1,2", help="hosts whose bridge ports are sniffed")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    ports = [int(x) for x in a.ports.split(",") if x]
    with Sampler(a.prefix, ports, a.out) as s:
        results = run_lab(a)
    lines = report(s, a.out, results)
    for data in [*a.out.glob("work/*/h*"), *a.out.glob("work/*/source")]:
        shutil.rmtree(data, ignore_errors=True)  # 32 MiB per host and mode: keep the logs only
    _print(lines)
    finish(lines, a.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
