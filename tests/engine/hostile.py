"""Scripted hostile peers for regression tests against a real swarmhub seeder on loopback.

Why a hand-written client: a hostile peer breaks the rules our own engine keeps (it asks
and never reads, floods, sends non-canonical bencode…), so it writes raw frames itself and
only *parses* what the seeder answers (with our sans-IO :class:`PeerConnection`).

- :class:`HostilePeer` connects, handshakes, then sends whatever the test scripts.
- :class:`SeederProcess` runs ``swarmhub seed`` in its own process so that its memory can
  be read from ``/proc/PID/status`` (VmRSS now, VmHWM the peak) and its debug log followed.
- :class:`SilentPeer` listens, completes the handshakes claiming to have the metadata,
  then never answers (what made ``get --timeout 10`` wait 60 s for a magnet's metadata).
- :func:`poll` waits on a condition with a deadline (no sleeps as synchronisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from interop.harness import REPO_ROOT, VENV_PYTHON, LineReader, Proc
from swarmhub.bencode import bencode
from swarmhub.wire import messages as m
from swarmhub.wire.connection import CLOSED, NEED_DATA, PeerConnection

__all__ = ["HostilePeer", "SeederProcess", "SilentPeer", "poll", "proc_status_kib",
           "seeder_env"]

HOSTILE_ID = b"-HO0001-hostile-peer"
RESERVED = m.make_reserved(extension=True, fast=True)


async def poll(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    """Return as soon as ``predicate()`` holds; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


def proc_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field in KiB (``VmRSS``: now, ``VmHWM``: the peak)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


class HostilePeer:
    """One scripted peer connection: raw frames out, parsed messages in.

    It never reads unless asked to (:meth:`recv`, :meth:`expect`), so once asyncio's
    stream buffer is full (128 KiB) the kernel buffers fill and the seeder's replies pile
    up on its side: the "asks but does not read" attack.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 reserved: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = PeerConnection(our_reserved=reserved)
        self.their_ext_ids: dict[str, int] = {}

    @classmethod
    async def open(cls, port: int, info_hash: bytes, *, reserved: bytes = RESERVED,
                   peer_id: bytes = HOSTILE_ID, timeout: float = 10.0) -> HostilePeer:
        """Connect to ``127.0.0.1:port`` and exchange handshakes."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        peer = cls(reader, writer, reserved)
        peer.send_raw(m.encode(m.Handshake(reserved, info_hash, peer_id)))
        await peer.expect(lambda ev: isinstance(ev, m.Handshake), timeout)
        return peer

    # -- sending (no checks: the point is to break the rules) --------------------------
    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, *msgs: m.Message) -> None:
        self.writer.write(b"".join(m.encode(msg) for msg in msgs))

    def send_ext_handshake(self, payload: bytes | None = None) -> None:
        """Our BEP 10 handshake (``payload`` verbatim if given, e.g. non-canonical)."""
        if payload is None:
            payload = bencode({b"m": {b"ut_metadata": 3}, b"v": b"hostile"})
        self.send(m.Extended(0, payload))

    async def their_ext_handshake(self, timeout: float = 10.0) -> dict[str, int]:
        """Wait for the seeder's BEP 10 handshake; return its extension ids."""
        from swarmhub.wire.extensions import decode_ext_handshake

        ev = await self.expect(lambda e: isinstance(e, m.Extended) and e.ext_id == 0, timeout)
        assert isinstance(ev, m.Extended)
        self.their_ext_ids = decode_ext_handshake(ev.payload).m
        return self.their_ext_ids

    # -- receiving -----------------------------------------------------------------------
    async def recv(self, timeout: float) -> m.Message:
        """The next message from the seeder; EOFError once it closed the connection."""
        async with asyncio.timeout(timeout):
            while True:
                ev = self.conn.next_event()
                if ev is CLOSED:
                    raise EOFError("the seeder closed the connection")
                if ev is not NEED_DATA:
                    return ev  # type: ignore[return-value]
                try:
                    data = await self.reader.read(1 << 20)
                except ConnectionError:
                    data = b""
                self.conn.receive_data(data)

    async def expect(self, predicate: Callable[[m.Message], bool], timeout: float) -> m.Message:
        """Skip messages until one satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.recv(timeout)
                if predicate(ev):
                    return ev

    async def count_until(self, predicate: Callable[[m.Message], bool], timeout: float, *,
                          counted: Callable[[m.Message], bool],
                          stop_after: int | None = None) -> tuple[int, m.Message | None]:
        """Read until a message satisfies ``predicate`` (or ``stop_after`` were counted);
        return how many before it satisfied ``counted``, and that message (None when
        stopped by the count)."""
        n = 0
        async with asyncio.timeout(timeout):
            while n != stop_after:
                ev = await self.recv(timeout)
                if predicate(ev):
                    return n, ev
                n += counted(ev)
        return n, None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


class SilentPeer:
    """A listening peer that answers the BEP 3 and BEP 10 handshakes (with ut_metadata and
    a ``metadata_size``) and then says nothing, reading and discarding what it gets.

    ``async with SilentPeer(info_hash) as silent:`` listens on ``silent.port``.
    """

    def __init__(self, info_hash: bytes, metadata_size: int = 20_000) -> None:
        self.info_hash = info_hash
        self.metadata_size = metadata_size
        self.port = 0
        self.connections = 0
        #: What it read after the BEP 3 handshake (extension handshake, metadata requests).
        self.heard = bytearray()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readexactly(m.HANDSHAKE_LENGTH)
            writer.write(m.encode(m.Handshake(RESERVED, self.info_hash, HOSTILE_ID)))
            ext = bencode({b"m": {b"ut_metadata": 2}, b"metadata_size": self.metadata_size})
            writer.write(m.encode(m.Extended(0, ext)))
            while data := await reader.read(65536):
                self.heard += data  # and never answer


def seeder_env(state_dir: Path, outlast: float = 0.0) -> dict[str, str]:
    """The environment :class:`SeederProcess` runs ``swarmhub seed`` in: ours, its state
    folder, and for ``outlast`` > 0 the clock-driven closes at 10x ``outlast`` seconds
    (overriding the caller's environment; keep-alives stay below the peer timeout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    env["SWARMHUB_STATE_DIR"] = str(state_dir)
    if outlast:
        far = f"{10 * outlast:.0f}"
        env["SWARMHUB_PEER_TIMEOUT"] = env["SWARMHUB_HANDSHAKE_TIMEOUT"] = far
    return env


class SeederProcess:
    """``swarmhub seed TORRENT DATA`` on 127.0.0.1 in its own process, with debug logging.

    Used as a context manager; the exit stops it by PID.
    """

    def __init__(self, torrent: Path, data: Path, state_dir: Path,
                 extra: tuple[str, ...] = (), outlast: float = 0.0) -> None:
        """``outlast``: the test's own bounds in seconds, summed; the seeder's clock-driven
        closes (``handshake_timeout``, ``peer_timeout``: a peer it holds unread bytes of
        counts as silent) are set far above it, so that only the test's state decides
        (0: the defaults). On a loaded machine a flood took over 120 s to drain and the
        seeder closed the connection mid-reply ("peer timed out")."""
        env = seeder_env(state_dir, outlast)
        state_dir.mkdir(parents=True, exist_ok=True)  # its log lives there, not in /tmp
        self.proc = Proc(
            [VENV_PYTHON, "-m", "swarmhub", "seed", torrent, data, "--listen", "127.0.0.1:0",
             "--trust", "-vv", *extra],
            env=env, name="seeder", log=state_dir / "seeder.log")
        self._lines = LineReader(self.proc.log)
        self.log: list[str] = []
        self.port = 0

    async def start(self, timeout: float = 30.0) -> int:
        """Wait until it listens; return the port."""
        def listening() -> bool:
            for line in self._read():
                if line.startswith("{") and '"listening"' in line:
                    self.port = int(json.loads(line)["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"the seeder exited\n{self.proc.describe()}")
            return self.port != 0

        await poll(listening, timeout, "the seeder listens")
        return self.port

    def _read(self) -> list[str]:
        new = self._lines.new_lines()
        self.log += new
        return new

    def logged(self, text: str) -> int:
        """How many log lines so far contain ``text``."""
        self._read()
        return sum(text in line for line in self.log)

    def kib(self, field: str = "VmRSS") -> int:
        return proc_status_kib(self.proc.pid, field)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.proc.stop()
