"""The source's CPU per uploaded byte: one super-seeding ``swarmhub seed`` -> K ``swarmhub get``.

    nice -n 10 .venv/bin/python bench/seed_cpu.py [--peers 12] [--size 32] [--rounds 3]
        [--up-kib 2441] [--down-kib 12207] [--seed-cmd OTHER/.venv/bin/swarmhub]
        [--profile DIR] [--json OUT]

Why: in the netns lab (issue 9, N=32) the source spends several times libtorrent's seeder
CPU per byte it uploads, and on the lab's 2 cores every CPU-s of the source is taken from
the clients. This is the lab's shape on loopback, without root: a tracker process
(``swarmhub.hub.tracker``, as host 0's), a seeder (``--trust``, no encryption, the lab's
torrent: hybrid, the piece size ``create`` picks) and K gated-by-start clients, every
process with the same in-process rate limits (20 mbit up, 100 mbit down by default: the
lab shapes links instead, so the limiter's own cost is in these figures). DHT, LSD and
PEX-to-outside are off; all traffic is loopback.

Measured per round: the seeder's CPU-s (/proc, all threads) from just before the first
client starts to the last client's ``finished`` line, the bytes it uploaded (its own
status lines: payload bytes) and so CPU-s per F (F = the
torrent's size); the clients' median CPU-s. ``--seed-cmd`` runs the seeder from another
tree (A/B: the rounds alternate, this tree first in odd rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.harness import REPO_ROOT, LineReader, Proc, free_port, make_test_data

MiB = 1 << 20
_ENV = {"SWARMHUB_LSD": "0", "SWARMHUB_DHT": "0"}


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live process, all threads (/proc); 0 if gone."""
    return sum(_user_sys(pid))


def _user_sys(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process (all threads) or of its thread ``tid``."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _seed_uploaded(reader: LineReader, last: int) -> int:
    for obj in _json_lines(reader):
        if "uploaded" in obj:
            last = int(obj["uploaded"])  # type: ignore[call-overload]
    return last


def _json_lines(reader: LineReader) -> list[dict[str, object]]:
    out = []
    for ln in reader.new_lines():
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def one_round(seed_cmd: list[str], torrent: Path, data: Path, work: Path, args: argparse.Namespace,
              size: int, profile: str | None) -> dict[str, object]:
    """One seeder + K clients; returns the round's figures."""
    py = str(REPO_ROOT / ".venv" / "bin" / "python")
    ours = [str(REPO_ROOT / ".venv" / "bin" / "swarmhub")]
    env = {**os.environ, **_ENV}
    seed_env = dict(env)
    if profile:
        seed_env["SWARMHUB_PROFILE"] = profile
    tport = int(args.tracker_port)
    lim = ["--upload-limit", str(args.up_kib)]
    with Proc([py, "-u", "-m", "swarmhub.hub.tracker", "--listen", f"127.0.0.1:{tport}",
               "--interval", "2", "--min-interval", "1"], log=work / "tracker.log",
              env=env, name="tracker") as tracker:
        tracker.wait_for_line(lambda ln: "Running on" in ln, 60)
        url = f"http://127.0.0.1:{tport}/announce"
        with Proc([*seed_cmd, "seed", str(torrent), str(data), "--listen", "127.0.0.1:0",
                   "--tracker", url, "--trust", "--encryption", "off", "--no-dht", "--no-lsd",
                   "--upload-limit", str(args.seed_up_kib)], log=work / "seed.log",
                  env=seed_env, name="seed") as seeder:
            seeder.wait_for_line(lambda ln: '"listening"' in ln, 120)
            load0 = os.getloadavg()[0]
            seed_reader = LineReader(seeder.log)
            up0 = _seed_uploaded(seed_reader, 0)
            us0 = _user_sys(seeder.pid)
            main0 = sum(_user_sys(seeder.pid, seeder.pid))
            perf = None
            if args.perf:
                perf = Proc(["perf", "record", "-F", "999", "-g", "-p", str(seeder.pid), "-o",
                             f"{args.perf}.{len(os.listdir(work))}"], log=work / "perf.log",
                            name="perf")
            t0 = time.monotonic()
            gets: list[Proc] = []
            readers: list[LineReader] = []
            try:
                for i in range(args.peers):
                    out = work / f"g{i}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    p = Proc([*ours, "get", str(torrent), "-o", str(out), "--json", "--tracker",
                              url, "--listen", "127.0.0.1:0", "--timeout", str(args.timeout),
                              "--seed-after", str(args.timeout), "--encryption", "off",
                              "--no-dht", "--no-lsd", *lim, "--download-limit",
                              str(args.down_kib)], log=work / f"g{i}.log", env=env, name=f"g{i}")
                    gets.append(p)
                    readers.append(LineReader(p.log))
                done: list[float | None] = [None] * len(gets)
                deadline = time.monotonic() + args.timeout
                while any(d is None for d in done):
                    if time.monotonic() > deadline:
                        raise RuntimeError("clients still running at the timeout")
                    for i, r in enumerate(readers):
                        for obj in _json_lines(r):
                            if obj.get("event") == "finished" and done[i] is None:
                                done[i] = time.monotonic()
                        if done[i] is None and gets[i].poll() is not None:
                            raise RuntimeError(f"client {i} exited early: {gets[i].describe()}")
                    time.sleep(0.05)
                us1 = _user_sys(seeder.pid)
                main_cpu = sum(_user_sys(seeder.pid, seeder.pid)) - main0
                user, system = us1[0] - us0[0], us1[1] - us0[1]
                seed_cpu = user + system
                wall = max(d for d in done if d is not None) - t0
                client_cpu = [_cpu_of(p.pid) for p in gets]
                time.sleep(1.2)  # the seeder's next status line (one a second)
                up1 = _seed_uploaded(seed_reader, up0)
            finally:
                if perf is not None:
                    perf.stop()
                for p in gets:
                    p.stop()
    src_f = (up1 - up0) / size
    return {"seed_cpu_s": round(seed_cpu, 3), "user": round(user, 2), "sys": round(system, 2),
            "main_thread": round(main_cpu, 2), "source_f": round(src_f, 3),
            "cpu_per_f": round(seed_cpu / src_f, 3) if src_f > 0 else None,
            "wall_s": round(wall, 2), "client_cpu_med": round(statistics.median(client_cpu), 3),
            "load": round(load0, 2), "load_end": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=12)
    ap.add_argument("--size", type=int, default=32, help="MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--up-kib", type=int, default=2441)
    ap.add_argument("--down-kib", type=int, default=12207)
    ap.add_argument("--seed-up-kib", type=int, default=0,
                    help="the seeder's limit (default none: the lab limits links, not "
                    "processes, and a limited seeder serves block by block from its task)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--seed-cmd", help="another tree's swarmhub for the seeder (A/B)")
    ap.add_argument("--profile", help="folder for the seeder's cProfile dumps")
    ap.add_argument("--perf", help="perf record the seeder to PERF.N (root)")
    ap.add_argument("--tracker-port", type=int, default=0)
    ap.add_argument("--workdir")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not args.tracker_port:
        args.tracker_port = free_port()
    from swarmhub.lab.bytecode import compile_package
    from swarmhub.metainfo import create_torrent, torrent_bytes

    compile_package(REPO_ROOT / "src" / "swarmhub")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="seedcpu-"))
    size = args.size * MiB
    data = make_test_data(work / "src", [size], seed=7)
    torrent = work / "payload.torrent"
    meta = create_torrent(data, trackers=[[f"http://127.0.0.1:{args.tracker_port}/announce"]])
    torrent.write_bytes(torrent_bytes(meta))
    trees: list[tuple[str, list[str]]] = [("this", [str(REPO_ROOT / ".venv/bin/swarmhub")])]
    if args.seed_cmd:
        other = Path(args.seed_cmd).resolve()
        compile_package(other.parents[2] / "src" / "swarmhub")
        trees.append(("other", [str(other)]))
    print(f"{args.size} MiB, pieces {meta.piece_length // 1024} KiB, {args.peers} clients, "
          f"up {args.up_kib} KiB/s, down {args.down_kib} KiB/s, seeder up "
          f"{args.seed_up_kib or 'unlimited'}", flush=True)
    rows = []
    for rnd in range(args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for name, cmd in order:
            prof = None
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                prof = str(Path(args.profile) / f"{name}-{rnd}.prof")
            r = one_round(cmd, torrent, data, work, args, size, prof)
            r.update(tree=name, round=rnd)
            rows.append(r)
            print(json.dumps(r), flush=True)
    for name, _ in trees:
        mine = [r for r in rows if r["tree"] == name and r["cpu_per_f"] is not None]
        if mine:
            per_f = [float(r["cpu_per_f"]) for r in mine]  # type: ignore[arg-type]
            loads = [float(r[k]) for r in mine for k in ("load", "load_end")]  # type: ignore[arg-type]
            print(f"{name}: seeder CPU-s per F median {statistics.median(per_f):.3f} "
                  f"({'/'.join(f'{x:.3f}' for x in per_f)}), source F "
                  f"{'/'.join(str(r['source_f']) for r in mine)}, load "
                  f"{min(loads):.1f}-{max(loads):.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
