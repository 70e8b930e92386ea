"""Link latency for the namespace lab, and the RTT check that proves it before each run.

Why this way: the kernels the lab runs on have ``htb`` but neither ``sch_netem`` nor
``sch_fq`` (so no netem delay and no BPF departure times under fq). What they have is
``br_netfilter`` and ``nfnetlink_queue``: in the bridge namespace, an iptables rule sends
every bridged IPv4 packet to an NFQUEUE, and ``delayline.c`` (next to this file, compiled
with gcc at lab setup into a cache folder) holds each one for the one-way latency, then
accepts it. A packet crosses the bridge once each way, so ``--latency 10ms`` is a 20 ms
round trip; the htb shapers sit on either side of the bridge and are not touched.

Its cost is wake-ups, not packets: at N=16 it took 10.6 CPU-s of a 25 s run when it woke
for every packet (443k packets), 4.0 CPU-s now that the kernel stamps each packet's arrival
(so while it holds packets it sleeps on its timer alone) and each wake releases all that
fall due within 0.2 ms (66k wakes). Most of what remains is the kernel forwarding the
released packets, which it does in the delay line's system calls.

What the lab's kernel allows (6.18, checked 2026-11-29 in /proc/config.gz and by trying):
``CONFIG_BRIDGE_NETFILTER=y`` (built in: no modprobe needed, ``/proc/sys/net/bridge`` is
there, ``bridge-nf-call-iptables`` is per namespace and 1 by default),
``NETFILTER_NETLINK_QUEUE=y``, ``NETFILTER_XT_TARGET_NFQUEUE=y`` and ``NFT_COMPAT=y`` (so
Debian's iptables, nf_tables flavour, can queue; ``NFT_QUEUE`` is not set, so plain ``nft``
cannot); ``NET_SCH_NETEM``, ``NET_SCH_FQ`` and ``NET_SCH_BPF`` are all unset.

Nothing of this runs in the root namespace: the rule, the queue and the program all live
in the lab's bridge namespace and go with it. Where it cannot work (no root, no
iptables, no gcc or libnetfilter-queue-dev, no br_netfilter), :func:`latency_support`
says why in one line and the lab refuses ``--latency`` rather than ignore it.

The check: a TCP connect to a closed port is answered by a RST, one round trip through
the bridge each way (there is no ping on these machines); :class:`RttStats` summarises the
samples and :func:`rtt_problem` (pure) says whether they match the latency asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmhub.lab.shell import LabError, run_cmd

__all__ = [
    "DELAYLINE_SOURCE",
    "NFQUEUE",
    "RTT_PROBE",
    "RTT_TOLERANCE",
    "RttStats",
    "build_delayline",
    "delayline_argv",
    "iptables_rule",
    "latency_support",
    "probe_plan",
    "rtt_problem",
]

log = logging.getLogger(__name__)

#: The C source of the delay line, shipped with the package.
DELAYLINE_SOURCE = Path(__file__).with_name("delayline.c")
#: The NFQUEUE number the bridge namespace uses (queues are per namespace).
NFQUEUE = 0
#: The measured median RTT must be within this fraction of 2 x the one-way latency.
RTT_TOLERANCE = 0.10
_APT = "iptables gcc libc6-dev libnetfilter-queue-dev (`make setup` installs them)"

#: Runs in a host namespace: ``python -c RTT_PROBE SAMPLES GAP_S ADDR...``; prints one JSON
#: object {addr: [ms, ...]} of TCP connect times to port 9 (refused: one round trip). It
#: asks for real-time priority (as root) so that, on a busy machine, waiting for a CPU does
#: not pass for link latency (seen: +4 ms samples with one core kept busy).
RTT_PROBE = r"""
import errno, json, os, socket, sys, time
try: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
except (AttributeError, OSError): pass
samples, gap, out = int(sys.argv[1]), float(sys.argv[2]), {}
for addr in sys.argv[3:]:
    ms = []
    for _ in range(samples):
        s = socket.socket(); s.settimeout(2.0)
        t = time.perf_counter()
        code = s.connect_ex((addr, 9))
        if code in (0, errno.ECONNREFUSED):
            ms.append((time.perf_counter() - t) * 1000)
        s.close(); time.sleep(gap)
    out[addr] = ms
print(json.dumps(out))
"""


@dataclass(frozen=True, slots=True)
class RttStats:
    """Round-trip times measured between lab hosts (ms), over ``pairs`` host pairs."""

    min_ms: float
    median_ms: float
    max_ms: float
    samples: int
    pairs: int

    @classmethod
    def from_samples(cls, by_pair: Mapping[str, Sequence[float]]) -> RttStats:
        """Summarise ``{pair: [ms, ...]}``; LabError when a pair got no answer at all."""
        silent = [pair for pair, ms in by_pair.items() if not ms]
        if silent or not by_pair:
            raise LabError(f"no round trip measured to {', '.join(silent) or 'any host'}")
        every = [x for ms in by_pair.values() for x in ms]
        return cls(
            min_ms=round(min(every), 3),
            median_ms=round(statistics.median(every), 3),
            max_ms=round(max(every), 3),
            samples=len(every),
            pairs=len(by_pair),
        )

    def __str__(self) -> str:
        return (
            f"RTT min {self.min_ms:.2f} ms, median {self.median_ms:.2f} ms, max "
            f"{self.max_ms:.2f} ms ({self.samples} TCP connects over {self.pairs} host pairs)"
        )


def rtt_problem(stats: RttStats, latency_ms: float) -> str | None:
    """None when the median RTT is 2 x ``latency_ms`` within :data:`RTT_TOLERANCE`; else
    a one-line reason. Without latency there is nothing to match."""
    if latency_ms <= 0:
        return None
    want = 2 * latency_ms
    if abs(stats.median_ms - want) <= RTT_TOLERANCE * want:
        return None
    return (
        f"--latency {latency_ms:g}ms should give an RTT of {want:g} ms "
        f"+-{RTT_TOLERANCE:.0%}, measured median {stats.median_ms:.2f} ms "
        f"(min {stats.min_ms:.2f}, max {stats.max_ms:.2f})"
    )


def probe_plan(hosts: int) -> list[tuple[int, list[int]]]:
    """Which host probes which: host 0 every other host, and the last host host 1 (a pair
    without host 0), so every host's link is crossed both ways at least once."""
    if hosts < 2:
        return []
    plan = [(0, list(range(1, hosts)))]
    if hosts >= 3:
        plan.append((hosts - 1, [1]))
    return plan


# -- the delay line ---------------------------------------------------------------------------


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarmhub" / "lab"


def build_delayline(cache: Path | None = None) -> Path:
    """The delay line's binary, compiled from :data:`DELAYLINE_SOURCE` on first use into a
    cache folder (named by the source's hash, so an edited source is rebuilt)."""
    source = DELAYLINE_SOURCE.read_bytes()
    folder = cache or _cache_dir()
    binary = folder / f"delayline-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise LabError(f"cannot build the delay line: gcc is not installed; needs {_APT}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{binary.name}.{os.getpid()}"
    try:
        run_cmd(
            [gcc, "-O2", "-Wall", "-o", str(tmp), str(DELAYLINE_SOURCE), "-lnetfilter_queue"],
            timeout=120,
        )
        os.replace(tmp, binary)  # atomic: concurrent labs never run a half-written file
    except LabError as exc:
        first = next((ln for ln in str(exc).splitlines() if "error" in ln), str(exc))
        raise LabError(f"cannot build the delay line ({first.strip()}); needs {_APT}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built the lab's delay line: %s", binary)
    return binary


def delayline_argv(binary: Path, latency_ms: float, queue: int = NFQUEUE) -> list[str]:
    """The command that holds every packet of ``queue`` for ``latency_ms``."""
    return [str(binary), str(queue), str(round(latency_ms * 1000))]


def iptables_rule(queue: int = NFQUEUE) -> list[str]:
    """The iptables command (for the bridge namespace) that queues every bridged packet.
    No ``--queue-bypass``: if the delay line dies, traffic stops and the run fails loudly
    instead of going on without latency."""
    return ["iptables", "-w", "5", "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", str(queue)]


_SUPPORT: tuple[bool, str] | None = None


def latency_support() -> tuple[bool, str]:
    """(True, "") when the delay line can run here; else (False, one line saying why).

    Checks root, iptables, the kernel's br_netfilter and nfnetlink_queue (loading them
    with modprobe if they are modules not loaded yet) and builds the program. The RTT check
    at lab setup is the final proof.
    """
    global _SUPPORT
    if _SUPPORT is None:
        _SUPPORT = _check_support()
    return _SUPPORT


def _check_support() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "--latency needs the namespace lab, which needs root (CAP_NET_ADMIN)"
    if shutil.which("iptables") is None:
        return False, f"--latency needs iptables in the bridge namespace; needs {_APT}"
    for proc_path, module in (
        ("/proc/sys/net/bridge", "br_netfilter"),
        ("/proc/net/netfilter/nfnetlink_queue", "nfnetlink_queue"),
    ):
        if not Path(proc_path).exists():
            modprobe = shutil.which("modprobe")
            if modprobe is not None:
                run_cmd([modprobe, module], check=False)
            if not Path(proc_path).exists():
                return False, (
                    f"--latency needs the kernel's {module} ({proc_path} is missing and "
                    f"`modprobe {module}` did not load it)"
                )
    try:
        build_delayline()
    except LabError as exc:
        return False, f"--latency: {exc}"
    return True, ""


def parse_probe(output: str) -> dict[str, list[float]]:
    """The RTT probe's JSON line -> {addr: [ms, ...]} (LabError if it printed none)."""
    for line in reversed(output.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return {str(k): [float(x) for x in v] for k, v in data.items()}
    raise LabError(f"the RTT probe printed no result: {output.strip()[-200:]!r}")
