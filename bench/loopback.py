"""Loopback throughput: one seeder -> one leecher over 127.0.0.1, libtorrent vs swarmhub.

    .venv/bin/python bench/loopback.py [--size 512] [--rounds 3] [--versions v1,hybrid]
                                       [--only lt|ours] [--workdir DIR] [--json OUT]
                                       [--other-src TREE]   # A/B: another checkout too

Why this shape: both sides run as separate processes (seeder and leecher each), on the same
data and the same .torrent (made by libtorrent, the reference encoder), the order rotated each
round so every implementation runs in every slot and page-cache and load effects fall on all.

Measured per run: wall time from leecher process start to verified completion (libtorrent: its
``finished`` event, every piece hash-checked; ours: ``swarmhub get`` exiting 0), the leecher's own
peak RSS and CPU seconds (from wait4), and the seeder's CPU seconds over the same span (from
/proc: on a 2-core machine the seeder's CPU competes with the leecher's). After each run the
downloaded bytes are compared with the source (outside the timing). MB = 10^6 bytes.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.interop.harness import (
    REPO_ROOT,
    HarnessError,
    HarnessTimeout,
    LineReader,
    LtPeer,
    Proc,
    compare_trees,
    lt_make_torrent,
    make_test_data,
)

__all__ = ["Run", "compile_trees", "main"]

MiB = 1 << 20
#: "lt-ours": a libtorrent seeder -> our leecher; "ours-lt": our seeder -> a libtorrent leecher
Impl = Literal["lt", "ours", "other", "lt-ours", "ours-lt"]
Version = Literal["v1", "v2", "hybrid"]


@dataclass
class Run:
    """One timed transfer."""

    impl: Impl
    version: str
    round: int
    ok: bool
    seconds: float = 0.0
    mb_s: float = 0.0
    rss_mib: float = 0.0
    cpu_s: float = 0.0
    seed_cpu_s: float = 0.0
    #: the leecher's main thread (ours: its event loop; hashing and disk I/O run in pool
    #: threads), up to its ``finished`` line; 0 for libtorrent
    loop_cpu_s: float = 0.0
    #: 1-minute load average when the run started (other work on the machine)
    load: float = 0.0
    gib: float = 1.0
    error: str = ""


def _cpu_of(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a running process so far, all its threads, or only
    thread ``tid`` (/proc)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compile_trees(other_src: Path | None) -> list[Path]:
    """Write the missing ``.pyc`` files of our package and of ``other_src``'s (the trees the
    runs import) before any timing; returns the packages.

    Why: a checkout has no bytecode where ``PYTHONDONTWRITEBYTECODE`` is set (this
    project's shells), so each ``swarmhub`` process compiled every module it imported,
    while an installed client (or a tree compiled once) only reads them: an A/A of one
    commit, the tree without bytecode against one with it, 3 alternating pairs each order,
    load 9-13: 2.21 vs 2.13 leecher CPU-s per GiB, charged to the code under test."""
    from swarmhub.lab.bytecode import compile_package

    roots = [REPO_ROOT / "src" / "swarmhub"]
    if other_src is not None:
        roots.append(other_src.resolve() / "src" / "swarmhub")
    for root in roots:
        compile_package(root)
    return roots


def _ours_cmd() -> list[str] | None:
    venv = REPO_ROOT / ".venv" / "bin" / "swarmhub"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("swarmhub")
    return [found] if found else None


def _reason(text: str) -> str:
    """One line for the table: the harness's verdict plus the child's last error line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "(no message)"
    errs = [ln for ln in lines[1:] if "error" in ln.lower() and not ln.startswith("File ")]
    detail = f" -- {errs[-1]}" if errs else ""
    return (lines[0] + detail)[:240]


def run_lt(
    torrent: Path,
    content: Path,
    dst: Path,
    logs: Path,
    timeout: float,
    preset: str = "tuned",
    settings: dict[str, int | bool | str] | None = None,
) -> tuple[float, Proc, float, float]:
    """libtorrent seeder process -> libtorrent leecher process; returns (seconds, leecher proc,
    seeder CPU seconds during the transfer, 0.0: see :func:`run_ours`)."""
    seeder = LtPeer(
        torrent,
        content.parent,
        seed=True,
        timeout=timeout + 60,
        log_dir=logs,
        preset=preset,
        settings=settings,
    )
    with seeder:
        assert seeder.proc is not None
        seed_cpu0 = _cpu_of(seeder.proc.pid)
        leecher = LtPeer(
            torrent,
            dst,
            peers=[("127.0.0.1", seeder.port)],
            timeout=timeout,
            stop_when_done=True,
            log_dir=logs,
            preset=preset,
            settings=settings,
        )
        with leecher:
            seconds = leecher.wait_finished(timeout)
            seed_cpu = _cpu_of(seeder.proc.pid) - seed_cpu0
            if leecher.hash_fails():
                raise HarnessError(f"libtorrent leecher saw {leecher.hash_fails()} hash failures")
            leecher.wait_exit(60)
            assert leecher.proc is not None
            return seconds, leecher.proc, seed_cpu, 0.0


def _listening_port(line: str) -> int | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("event") == "listening":
        return int(obj["port"])
    return None


def run_ours(
    cmd: list[str],
    torrent: Path,
    data_arg: Path,
    dst: Path,
    logs: Path,
    timeout: float,
    stall: float = 30.0,
    env: dict[str, str] | None = None,
) -> tuple[float, Proc, float, float]:
    """``swarmhub seed`` process -> ``swarmhub get`` process; returns (seconds, get proc,
    seeder CPU seconds during the transfer, the get's main-thread CPU seconds until its
    ``finished`` line); ``env``: the processes' environment.

    The seeder is ready once it prints ``{"event": "listening", "port": P}`` (after checking its
    data); the timing starts when the ``get`` process is started.
    """
    seed_args = [*cmd, "seed", str(torrent), str(data_arg), "--listen", "127.0.0.1:0", "--no-dht"]
    with Proc(seed_args, log=logs / "ours-seed.log", name="swarmhub-seed", env=env) as seeder:
        line = seeder.wait_for_line(lambda ln: _listening_port(ln) is not None, 120)
        port = _listening_port(line)
        get_args = [*cmd, "get", str(torrent), "-o", str(dst), "--peer", f"127.0.0.1:{port}"]
        get_args += ["--listen", "127.0.0.1:0", "--timeout", str(timeout), "--json", "--no-dht"]
        seed_cpu0 = _cpu_of(seeder.pid)
        with Proc(get_args, log=logs / "ours-get.log", name="swarmhub-get", env=env) as getter:
            done_at, loop_cpu = _wait_progressing(getter, timeout, stall)
            seed_cpu = _cpu_of(seeder.pid) - seed_cpu0
            # Same definition as libtorrent's figure: process start -> every piece verified
            # (the "finished" line); the exit that follows (fsync of the data, the tracker's
            # "stopped") is not timed for either client.
            return done_at - getter.started, getter, seed_cpu, loop_cpu


def run_mixed(
    impl: Impl,
    cmd: list[str],
    torrent: Path,
    content: Path,
    data_arg: Path,
    dst: Path,
    logs: Path,
    args: argparse.Namespace,
) -> tuple[float, Proc, float, float]:
    """One side ours, the other libtorrent (``impl`` "lt-ours" or "ours-lt"), timed as in
    :func:`run_lt` / :func:`run_ours`: which side sets the pace?"""
    timeout = args.timeout
    if impl == "lt-ours":
        lt_seed = LtPeer(torrent, content.parent, seed=True, timeout=timeout + 60, log_dir=logs,
                         preset=args.lt_preset, settings=dict(args.lt_set))
        with lt_seed:
            assert lt_seed.proc is not None
            seed_cpu0 = _cpu_of(lt_seed.proc.pid)
            get_args = [*cmd, "get", str(torrent), "-o", str(dst), "--peer",
                        f"127.0.0.1:{lt_seed.port}", "--listen", "127.0.0.1:0",
                        "--timeout", str(timeout), "--json", "--no-dht"]
            with Proc(get_args, log=logs / "ours-get.log", name="swarmhub-get") as getter:
                done_at, loop_cpu = _wait_progressing(getter, timeout, args.stall)
                return (done_at - getter.started, getter, _cpu_of(lt_seed.proc.pid) - seed_cpu0,
                        loop_cpu)
    seed_args = [*cmd, "seed", str(torrent), str(data_arg), "--listen", "127.0.0.1:0", "--no-dht"]
    with Proc(seed_args, log=logs / "ours-seed.log", name="swarmhub-seed") as seeder:
        line = seeder.wait_for_line(lambda ln: _listening_port(ln) is not None, 120)
        port = _listening_port(line) or 0
        seed_cpu0 = _cpu_of(seeder.pid)
        leecher = LtPeer(torrent, dst, peers=[("127.0.0.1", port)], timeout=timeout,
                         stop_when_done=True, log_dir=logs, preset=args.lt_preset,
                         settings=dict(args.lt_set))
        with leecher:
            seconds = leecher.wait_finished(timeout)
            seed_cpu = _cpu_of(seeder.pid) - seed_cpu0
            leecher.wait_exit(60)
            assert leecher.proc is not None
            return seconds, leecher.proc, seed_cpu, 0.0


def _wait_progressing(getter: Proc, timeout: float, stall: float) -> tuple[float, float]:
    """Wait for ``get`` to exit 0 and return when (monotonic) its ``finished`` line appeared
    and its main thread's CPU seconds by then (read as it runs); give up early when its JSON
    status lines show no progress for ``stall`` seconds (a broken transfer should not cost
    the whole timeout)."""
    reader = LineReader(getter.log)
    last: object = None
    changed = time.monotonic()
    done_at: float | None = None
    loop_cpu = 0.0
    while True:
        if done_at is None:
            loop_cpu = _cpu_of(getter.pid, getter.pid) or loop_cpu
        exited = getter.poll() is not None
        now = time.monotonic()
        for ln in reader.new_lines():
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == "finished" and done_at is None:
                done_at = now
            if isinstance(obj, dict) and "progress" in obj:
                key = (obj.get("progress"), obj.get("downloaded"))
                if key != last:
                    last, changed = key, now
        if now - changed > stall:
            raise HarnessError(
                f"swarmhub get made no progress for {stall:.0f} s\n{getter.describe()}"
            )
        if now - getter.started > timeout:
            raise HarnessTimeout(
                f"swarmhub get still running after {timeout:.0f} s\n{getter.describe()}"
            )
        if exited:
            break
        time.sleep(0.005)
    if getter.returncode != 0 or done_at is None:
        raise HarnessError(f"swarmhub get exited with {getter.returncode}\n{getter.describe()}")
    return done_at, loop_cpu


def _bench_one(
    impl: Impl,
    version: str,
    rnd: int,
    torrent: Path,
    content: Path,
    work: Path,
    args: argparse.Namespace,
    ours: list[str],
) -> Run:
    dst = work / f"dst-{impl}"
    logs = work / "logs" / f"{version}-r{rnd}-{impl}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    size = args.size * MiB
    load = os.getloadavg()[0]
    os.sync()  # no writeback of earlier runs' (or the data's) dirty pages during the timing
    try:
        if impl == "lt":
            seconds, proc, seed_cpu, loop_cpu = run_lt(
                torrent, content, dst, logs, args.timeout, args.lt_preset, dict(args.lt_set)
            )
        elif impl in ("lt-ours", "ours-lt"):
            data_arg = content if args.ours_data == "content" else content.parent
            seconds, proc, seed_cpu, loop_cpu = run_mixed(
                impl, ours, torrent, content, data_arg, dst, logs, args)
        else:
            data_arg = content if args.ours_data == "content" else content.parent
            env = None
            if impl == "other":  # the same command on another tree's code (A/B)
                env = dict(os.environ, PYTHONPATH=str(args.other_src.resolve() / "src"))
            seconds, proc, seed_cpu, loop_cpu = run_ours(
                ours, torrent, data_arg, dst, logs, args.timeout, args.stall, env
            )
        if args.verify:
            compare_trees(content, dst / content.name)
    except (HarnessError, AssertionError, OSError) as e:
        return Run(impl, version, rnd, ok=False, error=_reason(str(e)))
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    return Run(
        impl,
        version,
        rnd,
        ok=True,
        seconds=seconds,
        mb_s=size / 1e6 / seconds,
        rss_mib=(proc.maxrss_kib or 0) / 1024,
        cpu_s=proc.cpu_s or 0.0,
        seed_cpu_s=seed_cpu,
        loop_cpu_s=loop_cpu,
        load=load,
        gib=size / (1 << 30),
    )


def _fmt(runs: list[Run]) -> tuple[str, str, str, str, str]:
    ok = [r for r in runs if r.ok]
    if not ok:
        return "-", "-", "-", "-", "-"
    return (
        f"{statistics.median(r.mb_s for r in ok):7.1f}",
        f"{statistics.median(r.seconds for r in ok):6.2f}",
        f"{max(r.rss_mib for r in ok):7.0f}",
        f"{statistics.median(r.cpu_s for r in ok):5.2f}",
        f"{statistics.median(r.seed_cpu_s for r in ok):5.2f}",
    )


def _report(version: str, runs: list[Run], ours_reason: str | None) -> str:
    lt_runs = [r for r in runs if r.impl == "lt"]
    our_runs = [r for r in runs if r.impl == "ours"]
    other_runs = [r for r in runs if r.impl == "other"]
    print(f"\n== {version} ==")
    print(f"{'run':<10}{'impl':<8}{'MB/s':>8}{'s':>8}{'RSS MiB':>9}{'CPU s':>7}{'seed CPU':>9}"
          "  note")
    for r in runs:
        if r.ok:
            print(
                f"r{r.round:<9}{r.impl:<8}{r.mb_s:8.1f}{r.seconds:8.2f}"
                f"{r.rss_mib:9.0f}{r.cpu_s:7.2f}{r.seed_cpu_s:9.2f}  load {r.load:.1f}"
            )
        else:
            print(f"r{r.round:<9}{r.impl:<8}{'-':>8}{'-':>8}{'-':>9}{'-':>7}{'-':>9}"
                  f"  FAILED: {r.error}")
    mixed = [(name, [r for r in runs if r.impl == name]) for name in ("lt-ours", "ours-lt")]
    for name, rs in (("lt", lt_runs), ("ours", our_runs), ("other", other_runs), *mixed):
        if rs:
            mb, s, rss, cpu, seed = _fmt(rs)
            print(f"{'median':<10}{name:<8}{mb:>8}{s:>8}{rss:>9}{cpu:>7}{seed:>9}  (RSS: max)")
    lt_ok = [r.mb_s for r in lt_runs if r.ok]
    our_ok = [r.mb_s for r in our_runs if r.ok]
    lt_txt = f"libtorrent {statistics.median(lt_ok):.1f} MB/s" if lt_ok else "libtorrent n/a"
    if our_ok:
        ours_txt = f"ours {statistics.median(our_ok):.1f} MB/s"
    elif ours_reason:
        ours_txt = f"ours: not available ({ours_reason})"
    elif our_runs:
        ours_txt = f"ours: failed ({our_runs[-1].error})"
    else:
        ours_txt = "ours: not run"
    ratio = (
        f"ratio ours/libtorrent {statistics.median(our_ok) / statistics.median(lt_ok):.2f}"
        if lt_ok and our_ok
        else "ratio n/a"
    )
    cpu = "; ".join(
        f"{name} CPU-s/GiB leecher {statistics.median(r.cpu_s / r.gib for r in ok):.2f}"
        + (f" (event loop {statistics.median(r.loop_cpu_s / r.gib for r in ok):.2f})"
           if all(r.loop_cpu_s for r in ok) else "")
        + f" seeder {statistics.median(r.seed_cpu_s / r.gib for r in ok):.2f}"
        for name, rs in (("lt", lt_runs), ("ours", our_runs), ("other", other_runs), *mixed)
        if (ok := [r for r in rs if r.ok])
    )
    other_ok = [r.mb_s for r in other_runs if r.ok]
    if other_ok and lt_ok:
        ratio += (f"; other {statistics.median(other_ok):.1f} MB/s, ratio other/libtorrent "
                  f"{statistics.median(other_ok) / statistics.median(lt_ok):.2f}")
    if other_ok and our_ok:
        ratio += f"; ours/other {statistics.median(our_ok) / statistics.median(other_ok):.2f}"
    loads = [r.load for r in runs]
    load = f"load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    return f"{version}: {lt_txt}; {ours_txt}; {ratio}\n  {cpu}; {load}"


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="MiB (default 512)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--versions", default="v1,hybrid", help="comma list of v1, v2, hybrid")
    p.add_argument("--only", choices=["lt", "ours"], default=None)
    p.add_argument("--piece-size", type=int, default=1024, help="KiB (default 1024)")
    p.add_argument("--files", type=int, default=1, help="split the data into N files")
    p.add_argument("--timeout", type=float, default=300.0, help="per transfer, seconds")
    p.add_argument(
        "--stall", type=float, default=30.0, help="give up on ours after S s without progress"
    )
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs)")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument(
        "--ours-data",
        choices=["content", "parent"],
        default="content",
        help="what `swarmhub seed` gets as <data>: the file/folder itself, or its parent dir",
    )
    p.add_argument("--lt-preset", choices=["tuned", "default"], default="tuned")
    p.add_argument(
        "--lt-set",
        action="append",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="override one libtorrent setting on both libtorrent peers (repeatable)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write all runs as JSON")
    p.add_argument(
        "--other-src",
        type=Path,
        default=None,
        metavar="TREE",
        help="also run our client from another checkout (PYTHONPATH=TREE/src) in every round, "
        "as impl 'other': an A/B of two versions against the same libtorrent runs",
    )
    p.add_argument(
        "--mixed",
        action="store_true",
        help="also run a libtorrent seeder -> our leecher ('lt-ours') and our seeder -> a "
        "libtorrent leecher ('ours-lt') in every round: which side sets the pace",
    )
    args = p.parse_args(argv)
    args.versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    for v in args.versions:
        if v not in ("v1", "v2", "hybrid"):
            p.error(f"unknown version {v!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    impls: list[Impl] = ["lt", "ours"] if args.only is None else [args.only]
    if args.other_src is not None:
        impls.append("other")
    if args.mixed:
        impls += ["lt-ours", "ours-lt"]
    ours = _ours_cmd()
    ours_reason: str | None = None
    if "ours" in impls and ours is None:
        ours_reason = "no `swarmhub` command in .venv/bin or on PATH"
    if impls != ["lt"]:
        compile_trees(args.other_src)
    work = Path(tempfile.mkdtemp(prefix="swarmhub-bench-", dir=args.workdir))
    all_runs: list[Run] = []
    summary: list[str] = []
    try:
        t0 = time.monotonic()
        n = max(1, args.files)
        per = args.size * MiB // n
        sizes = [per] * (n - 1) + [args.size * MiB - per * (n - 1)]
        content = make_test_data(work / "src", sizes, seed=20240601)
        print(f"data: {args.size} MiB in {n} file(s) at {content} ({time.monotonic() - t0:.1f} s)")
        for version in args.versions:
            torrent = work / f"{version}.torrent"
            torrent.write_bytes(lt_make_torrent(content, version, args.piece_size * 1024))
            runs: list[Run] = []
            disabled = ours_reason
            for rnd in range(1, args.rounds + 1):
                # Rotated, not reversed: with three or more implementations a reversal
                # keeps the middle one in the middle slot every round (dpath-22's A/A
                # lost 2 of 3 rounds there); rotation gives each slot to each in turn.
                k = (rnd - 1) % len(impls)
                order = impls[k:] + impls[:k]
                for impl in order:
                    if impl != "lt" and (disabled is not None or ours is None):
                        continue
                    run = _bench_one(impl, version, rnd, torrent, content, work, args, ours or [])
                    runs.append(run)
                    state = f"{run.mb_s:.1f} MB/s" if run.ok else f"FAILED: {run.error}"
                    print(f"  {version} round {rnd} {impl}: {state}", flush=True)
                    if (
                        impl == "ours"
                        and not run.ok
                        and not any(r.ok for r in runs if r.impl == "ours")
                    ):
                        disabled = run.error  # ours never worked for this version: stop trying
            summary.append(_report(version, runs, disabled))
            all_runs += runs
        print()
        for line in summary:
            print(line)
        if args.json is not None:
            args.json.write_text(json.dumps([asdict(r) for r in all_runs], indent=1))
    finally:
        failed = any(not r.ok for r in all_runs)
        if args.keep:
            print(f"kept {work}")
        elif failed:  # keep the logs for the post-mortem, drop the bulky data
            shutil.rmtree(work / "src", ignore_errors=True)
            print(f"logs kept in {work / 'logs'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    lt_failed = any(not r.ok for r in all_runs if r.impl == "lt")
    return 1 if lt_failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The network rule: no LSD multicast or DHT routers from the processes this bench starts.
    os.environ.update(SWARMHUB_LSD="0", SWARMHUB_DHT="0", SWARMHUB_DHT_LOCAL_ONLY="1")
    sys.exit(main())
