"""Process harness for interop tests and benchmarks (pytest-independent).

Why a harness: interop tests and benches start real third-party peers (libtorrent via
``ltpeer.py``, aria2c) and our own CLI as *separate processes*. Each of them must be bounded in
time, leave its output in a file for the post-mortem, and be cleaned up by PID whatever happens.

- :class:`Proc` starts any command with stdout (and stderr) in files, waits with a deadline, reads
  the child's own peak RSS from ``wait4`` and stops it by PID (SIGTERM, then SIGKILL after 5 s).
- :class:`LtPeer` runs ``ltpeer.py`` (one libtorrent session) and follows its JSON lines.
- :func:`make_test_data`, :func:`lt_make_torrent`, :func:`compare_trees` build inputs and check
  outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "LTPEER",
    "REPO_ROOT",
    "VENV_PYTHON",
    "HarnessError",
    "HarnessTimeout",
    "LineReader",
    "LtPeer",
    "Proc",
    "compare_trees",
    "free_port",
    "lt_make_torrent",
    "make_test_data",
    "read_vmhwm_kib",
    "wait_listening",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
LTPEER = Path(__file__).resolve().with_name("ltpeer.py")
_venv_python = REPO_ROOT / ".venv" / "bin" / "python"
#: The interpreter that has libtorrent installed: the project venv when there is one.
VENV_PYTHON = _venv_python if _venv_python.exists() else Path(sys.executable)

_POLL_S = 0.005  # wait loops poll at this period: negligible CPU, <= 5 ms of timing error
_CHUNK = 1 << 20


class HarnessError(RuntimeError):
    """A started process failed or misbehaved; the message carries the tail of its output."""


class HarnessTimeout(HarnessError, TimeoutError):
    """A bounded wait ran out."""


#: every port free_port handed out in this process (see there)
_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not handed out before in this
    process (prefer port 0 where the peer reports it).

    Why the memory: the probe socket is closed on return, so two calls in a row may get the
    same ephemeral port back from the kernel (a CI run started a hub with
    ``--listen 127.0.0.1:47727 --peer-listen 127.0.0.1:47727``, which then failed to bind)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise HarnessError("no fresh TCP port on 127.0.0.1 in 1,000 tries")


def wait_listening(
    port: int, timeout: float, proc: Proc | None = None, host: str = "127.0.0.1"
) -> None:
    """Wait until something accepts TCP connections on ``host:port`` (bounded); fail early if
    ``proc`` exits meanwhile. Used for peers that do not report their port themselves."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise HarnessError(
                f"{proc.name} exited ({proc.returncode}) before listening on {host}:{port}\n"
                f"{proc.describe()}"
            )
        if time.monotonic() >= deadline:
            extra = f"\n{proc.describe()}" if proc is not None else ""
            raise HarnessTimeout(f"nothing listens on {host}:{port} after {timeout:.1f} s{extra}")
        time.sleep(0.05)


def read_vmhwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _tail(path: Path | None, n: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 8192))
        lines = f.read().decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-n:])


class Proc:
    """A child process with its output in files, bounded waits and cleanup by PID.

    The child runs in its own session (process group id == its PID) so :meth:`stop` also reaches
    helpers it forked. Used as a context manager, the exit always stops it.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        log: Path | None = None,
        stderr_log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        """Start ``args`` now. stdout goes to ``log`` (a temp file if None); stderr goes to
        ``stderr_log`` or, if None, into the same file as stdout."""
        self.args = [os.fspath(a) for a in args]
        self.name = name or Path(self.args[0]).name
        if log is None:
            fd, tmp = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            log = Path(tmp)
        self.log = log
        self.stderr_log = stderr_log
        self.returncode: int | None = None
        #: Peak RSS of the child itself in KiB, from wait4 (set once it has been reaped).
        self.maxrss_kib: int | None = None
        #: User + system CPU seconds of the child itself, from wait4.
        self.cpu_s: float | None = None
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()/_reap
        self._err = open(stderr_log, "wb") if stderr_log is not None else None  # noqa: SIM115
        full_env = dict(os.environ if env is None else env)
        self.started = time.monotonic()
        try:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err if self._err is not None else subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self._close_files()
            raise
        self.pid = self._popen.pid
        self.ended: float | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _reap(self, block: bool) -> int | None:
        """Collect the exit status with wait4, which also yields the child's own resource use
        (peak RSS, CPU time) -- exact per child, unlike RUSAGE_CHILDREN."""
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the status is lost
            self.returncode = -1
        else:
            if pid == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            self.maxrss_kib = int(usage.ru_maxrss)
            self.cpu_s = usage.ru_utime + usage.ru_stime
        self.ended = time.monotonic()
        self._popen.returncode = self.returncode  # keep Popen from waiting again
        self._close_files()
        return self.returncode

    def _close_files(self) -> None:
        self._out.close()
        if self._err is not None:
            self._err.close()

    def poll(self) -> int | None:
        """The exit code if the child has exited, else None."""
        return self._reap(block=False)

    @property
    def alive(self) -> bool:
        return self.poll() is None

    @property
    def elapsed(self) -> float:
        """Seconds from start to exit (or to now while it runs)."""
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the exit code; raise :class:`HarnessTimeout` (the child
        keeps running: the caller or the context manager stops it)."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if time.monotonic() >= deadline:
                raise HarnessTimeout(
                    f"{self.name} (pid {self.pid}) still running after {timeout:.1f} s\n"
                    f"{self.describe()}"
                )
            time.sleep(_POLL_S)

    def wait_ok(self, timeout: float) -> None:
        """Wait for exit code 0; anything else raises :class:`HarnessError` with the log tail."""
        code = self.wait(timeout)
        if code != 0:
            raise HarnessError(f"{self.name} exited with {code}\n{self.describe()}")

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the child's process group, SIGKILL after ``grace`` s; return its exit code."""
        if self.poll() is not None:
            return self.returncode
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.poll() is not None:
                self._kill_group_leftovers()
                return self.returncode
            time.sleep(0.01)
        self._signal(signal.SIGKILL)
        return self._reap(block=True)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # the group we created: pgid == our child's pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def _kill_group_leftovers(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    # -- output -----------------------------------------------------------------------------
    def output(self) -> str:
        """Everything the child wrote to its stdout log so far."""
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""

    def describe(self) -> str:
        """Command line and output tails, for error messages."""
        parts = [f"$ {' '.join(self.args)}", f"--- {self.log} (tail) ---", _tail(self.log)]
        if self.stderr_log is not None:
            parts += [f"--- {self.stderr_log} (tail) ---", _tail(self.stderr_log)]
        return "\n".join(parts)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """First stdout line for which ``predicate`` is true; raise if the child exits first or
        the deadline passes."""
        deadline = time.monotonic() + timeout
        reader = LineReader(self.log)
        while True:
            for line in reader.new_lines():
                if predicate(line):
                    return line
            if self.poll() is not None:
                for line in reader.new_lines():
                    if predicate(line):
                        return line
                raise HarnessError(f"{self.name} exited ({self.returncode})\n{self.describe()}")
            if time.monotonic() >= deadline:
                raise HarnessTimeout(f"no matching line within {timeout} s\n{self.describe()}")
            time.sleep(_POLL_S)


class LineReader:
    """Incremental reader of complete lines appended to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [ln.decode("utf-8", "replace") for ln in lines]


class LtPeer:
    """One libtorrent peer in its own process (``ltpeer.py``), followed through its JSON lines.

    ``with LtPeer(torrent, save_dir, seed=True) as seeder:`` starts it and waits (bounded) until it
    listens *and* its files are checked, so a peer dialling ``seeder.port`` is served at once.
    """

    def __init__(
        self,
        torrent: Path | str,
        save: Path,
        *,
        seed: bool = False,
        seed_mode: bool = False,
        peers: Iterable[tuple[str, int] | str] = (),
        listen: str = "127.0.0.1:0",
        timeout: float = 120.0,
        stop_when_done: bool = False,
        upload_limit: int = 0,
        download_limit: int = 0,
        log_dir: Path | None = None,
        name: str | None = None,
        start_timeout: float = 30.0,
        preset: str = "tuned",
        settings: Mapping[str, int | bool | str] | None = None,
        python: Path = VENV_PYTHON,
        encryption: bool = False,
    ) -> None:
        """Prepare (not start) the peer; see ``ltpeer.py --help`` for the meaning of each option.
        ``settings`` overrides single settings_pack values (``--set NAME=VALUE``)."""
        self.name = name or ("lt-seed" if seed else "lt-leech")
        args: list[str | os.PathLike[str]] = [python, "-u", LTPEER, "--torrent", torrent]
        args += ["--save", save, "--listen", listen, "--timeout", str(timeout)]
        if seed:
            args.append("--seed")
        if seed_mode:
            args.append("--seed-mode")
        if stop_when_done:
            args.append("--stop-when-done")
        if upload_limit:
            args += ["--upload-limit", str(upload_limit)]
        if download_limit:
            args += ["--download-limit", str(download_limit)]
        for p in peers:
            args += ["--peer", p if isinstance(p, str) else f"{p[0]}:{p[1]}"]
        if preset != "tuned":
            args += ["--preset", preset]
        if encryption:
            args.append("--encryption")
        for key, value in (settings or {}).items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            args += ["--set", f"{key}={text}"]
        self._args = args
        self._log_dir = log_dir
        self._start_timeout = start_timeout
        self.proc: Proc | None = None
        self.port = 0
        self.events: list[dict[str, Any]] = []
        self.last_status: dict[str, Any] = {}
        self.finished_elapsed: float | None = None  # wall seconds, process start -> finished
        self._reader: LineReader | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the process and wait until it listens and its torrent is checked."""
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="ltpeer-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            self._args,
            log=log_dir / f"{self.name}.jsonl",
            stderr_log=log_dir / f"{self.name}.err",
            name=self.name,
        )
        self._reader = LineReader(self.proc.log)
        listening = self._wait_event("listening", self._start_timeout)
        self.port = int(listening["port"])
        self._wait_event("ready", self._start_timeout)
        return self

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> int | None:
        """Terminate by PID (SIGKILL after 5 s); return the exit code."""
        if self.proc is None:
            return None
        code = self.proc.stop(grace=5.0)
        self._pump()
        return code

    @property
    def pid(self) -> int:
        assert self.proc is not None, "LtPeer not started"
        return self.proc.pid

    # -- following the JSON stream ----------------------------------------------------------
    def _pump(self) -> list[dict[str, Any]]:
        """Parse new lines; remember events and the latest status line."""
        if self._reader is None:
            return []
        fresh: list[dict[str, Any]] = []
        now = time.monotonic()
        for line in self._reader.new_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if "event" in obj:
                self.events.append(obj)
                fresh.append(obj)
                if obj["event"] == "finished" and self.finished_elapsed is None:
                    assert self.proc is not None
                    self.finished_elapsed = now - self.proc.started
            else:
                self.last_status = obj
        return fresh

    def _find(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == event), None)

    def _wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None, "LtPeer not started"
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            found = self._find(event)
            if found is not None:
                return found
            err = self._find("torrent_error") or self._find("listen_failed")
            if err is not None:
                raise HarnessError(f"{self.name}: {err}\n{self.proc.describe()}")
            if self.proc.poll() is not None:
                self._pump()
                found = self._find(event)
                if found is not None:
                    return found
                raise HarnessError(
                    f"{self.name} exited ({self.proc.returncode}) before {event!r}\n"
                    f"{self.proc.describe()}"
                )
            if time.monotonic() >= deadline:
                raise HarnessTimeout(
                    f"{self.name}: no {event!r} within {timeout:.1f} s\n{self.proc.describe()}"
                )
            time.sleep(_POLL_S)

    def wait_finished(self, timeout: float) -> float:
        """Wait for the ``finished`` event; return wall seconds from process start to it.

        Raises :class:`HarnessTimeout` on timeout and :class:`HarnessError` if the peer exits or
        reports a torrent error first.
        """
        self._wait_event("finished", timeout)
        assert self.finished_elapsed is not None
        return self.finished_elapsed

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself (``stop_when_done``); return its exit code."""
        assert self.proc is not None, "LtPeer not started"
        code = self.proc.wait(timeout)
        self._pump()
        return code

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """First status line (from now on, or the latest one) satisfying ``predicate``."""
        assert self.proc is not None, "LtPeer not started"
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            if self.last_status and predicate(self.last_status):
                return self.last_status
            if self.proc.poll() is not None:
                self._pump()
                if self.last_status and predicate(self.last_status):
                    return self.last_status
                raise HarnessError(
                    f"{self.name} exited ({self.proc.returncode})\n{self.proc.describe()}"
                )
            if time.monotonic() >= deadline:
                raise HarnessTimeout(
                    f"{self.name}: no matching status within {timeout:.1f} s "
                    f"(last {self.last_status})\n{self.proc.describe()}"
                )
            time.sleep(_POLL_S)

    def hash_fails(self) -> int:
        self._pump()
        return sum(1 for e in self.events if e["event"] == "hash_failed")


def make_test_data(dir: Path, sizes: Sequence[int], seed: int, *, name: str = "payload") -> Path:
    """Write deterministic pseudo-random content and return its path (the torrent's root).

    One size gives a single file ``dir/name``; several give a folder ``dir/name`` with
    ``file_000.bin``… and the last file nested under ``sub/`` so paths with folders are covered.
    The same (sizes, seed) always gives the same bytes.
    """
    dir.mkdir(parents=True, exist_ok=True)
    root = dir / name
    if len(sizes) == 1:
        targets = [root]
    else:
        targets = [root / f"file_{i:03d}.bin" for i in range(len(sizes))]
        targets[-1] = root / "sub" / f"file_{len(sizes) - 1:03d}.bin"
    for i, (path, size) in enumerate(zip(targets, sizes, strict=True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed * 1_000_003 + i)
        with open(path, "wb") as f:
            left = size
            while left > 0:
                n = min(left, _CHUNK)
                f.write(rng.randbytes(n))
                left -= n
    return root


def lt_make_torrent(
    path: Path,
    version: Literal["v1", "v2", "hybrid"],
    piece_size: int,
    trackers: Sequence[str] = (),
    web_seeds: Sequence[str] = (),
) -> bytes:
    """A .torrent for the file or folder at ``path`` made by libtorrent itself (the reference
    encoder); the data's save path is ``path.parent``."""
    import libtorrent as lt

    flags = {"v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only, "hybrid": 0}[version]
    files = lt.list_files(str(path))
    if not files:
        raise HarnessError(f"no files under {path}")
    ct = lt.create_torrent(files, piece_size, flags)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    for url in web_seeds:
        ct.add_url_seed(url)
    ct.set_creator("swarmhub tests (libtorrent)")
    lt.set_piece_hashes(ct, str(path.parent))
    out: bytes = lt.bencode(ct.generate())
    return out


def _digest(path: Path) -> tuple[int, str]:
    with open(path, "rb") as f:
        return path.stat().st_size, hashlib.file_digest(f, "sha256").hexdigest()


def _files(root: Path, ignore_pad: bool) -> dict[str, Path]:
    if root.is_file():
        return {".": root}
    out: dict[str, Path] = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if ignore_pad and ".pad" in rel.parts:
            continue
        if p.is_file():
            out[rel.as_posix()] = p
    return out


def compare_trees(a: Path, b: Path, *, ignore_pad: bool = True) -> None:
    """Assert that files (or folders) ``a`` and ``b`` hold the same paths with identical bytes.

    BEP 47 ``.pad`` folders are ignored by default (some clients write pad files, others don't).
    """
    fa, fb = _files(a, ignore_pad), _files(b, ignore_pad)
    if fa.keys() != fb.keys():
        only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
        raise AssertionError(f"file sets differ: only in {a}: {only_a}; only in {b}: {only_b}")
    rels = sorted(fa)
    with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL
        da = list(pool.map(_digest, [fa[r] for r in rels]))
        db = list(pool.map(_digest, [fb[r] for r in rels]))
    bad = [
        f"{r}: {sa} B {ha[:12]} != {sb} B {hb[:12]}"
        for r, (sa, ha), (sb, hb) in zip(rels, da, db, strict=True)
        if (sa, ha) != (sb, hb)
    ]
    if bad:
        raise AssertionError(f"{len(bad)} file(s) differ between {a} and {b}: " + "; ".join(bad))
