"""Where a netns lab peer's CPU goes inside the compiled core: fold `perf script` stacks.

A lab peer's Python frames are invisible to perf and its interpreted callers hide the
compiled core from cProfile (a compiled function's time is charged to the next
interpreted frame). With DWARF call graphs perf sees the mypyc functions themselves, so
this folds each sample of the client processes, from the start gate to the last
completion, by the outermost compiled frame (the core's entry point the driver called)
and by the innermost one (where in the core the time went). Usage (root):

    perf record -e cpu-clock -F 299 -a --call-graph dwarf,8192 -k CLOCK_MONOTONIC -o P.data \\
        -- swarmhub lab run --peers 32 --modes p2p --latency 10ms --size 32MiB --out OUT
    perf script -i P.data --pid PIDS -F pid,time,ip,sym,dso > P.txt   # PIDS: the clients
    python bench/perf_core.py P.txt OUT/results.json [--mode p2p] [--entry NAME]

(the client PIDs: `perf report -i P.data --sort pid -g none`, the python3 ones with the
most samples). The clock offset is taken now: run it on the machine that recorded.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

_FRAME = re.compile(r"\s*\S+ (.*) \((.*)\)$")


def stacks(path: Path, t0: float, t1: float) -> Iterator[list[tuple[str, str]]]:
    """Each sample's (symbol, object) frames, innermost first, within [t0, t1] monotonic."""
    stack: list[tuple[str, str]] | None = None
    with path.open() as f:
        for line in f:
            if not line.strip():
                if stack is not None:
                    yield stack
                stack = None
            elif not line.startswith("\t"):
                t = float(line.split()[1].rstrip(":"))
                stack = [] if t0 <= t <= t1 else None
            elif stack is not None and (m := _FRAME.match(line.rstrip())):
                stack.append((m.group(1), m.group(2)))
    if stack is not None:
        yield stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("script", type=Path, help="perf script output (pid,time,ip,sym,dso)")
    ap.add_argument("results", type=Path, help="the lab run's results.json (its window)")
    ap.add_argument("--mode", default="p2p")
    ap.add_argument("--entry", help="break this outermost compiled function down")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    run = next(r for r in json.loads(args.results.read_text()) if r["mode"] == args.mode)
    t0 = run["gate_unix_s"] - (time.time() - time.monotonic())
    outer: collections.Counter[str] = collections.Counter()
    inner: collections.Counter[str] = collections.Counter()
    objs: collections.Counter[str] = collections.Counter()
    total = 0
    for stack in stacks(args.script, t0, t0 + run["last_completion_s"]):
        total += 1
        objs["compiled core" if "mypyc" in stack[0][1] else Path(stack[0][1]).name] += 1 \
            if stack else 0
        core = [s for s, obj in stack if "mypyc" in obj]
        if core and (args.entry is None or args.entry == core[-1]):
            outer[core[-1]] += 1
            inner[core[0]] += 1
    if not total:
        raise SystemExit("no samples in the window (wrong PIDs, or another machine's clock?)")
    print(f"{total} samples in the window; leaf object:")
    for name, n in objs.most_common(8):
        print(f"  {100 * n / total:5.1f} %  {name}")
    print(f"with a compiled-core frame: {100 * sum(outer.values()) / total:.1f} %; by entry:")
    for name, n in outer.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("by innermost compiled function:")
    for name, n in inner.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
