"""What the daemon must remember across a restart or a ``kill -9``: one small JSON file per
torrent, written atomically (temp file, fsync, rename), plus the API token.

Why one file per torrent: an update rewrites a few hundred bytes, a crash mid-write leaves
the old file whole, and a damaged file loses one torrent, not the list. Verified pieces are
the engine's business (its resume data); here is only what the user asked for: the source,
where to save, paused or not, limits, file priorities.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from swarmhub.errors import SwarmhubError

__all__ = ["StateDir", "TorrentRecord", "write_atomic"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TorrentRecord:
    """The persistent part of one torrent in the daemon (``torrents/<id>.json``)."""

    #: The 20-byte wire info hash, hex: the torrent's id in the API.
    id: str
    #: ``torrent`` (an upload or the watch folder), ``magnet`` or ``hub``.
    kind: str
    #: The magnet link or hub URL; for uploads, the file name it came with.
    source: str
    save_path: str
    name: str = ""
    paused: bool = False
    #: Every piece was verified once: restart it as a seed, outside the download queue.
    complete: bool = False
    #: Verified bytes when it last stopped (what a paused torrent shows).
    have_bytes: int = 0
    #: Queue position: lower starts first.
    order: int = 0
    #: bytes/s, 0 = unlimited.
    download_limit: int = 0
    upload_limit: int = 0
    #: One per data file (0 skip, 1 normal .. 7 sooner), or None: all normal.
    priorities: list[int] | None = None
    peers: list[str] = field(default_factory=list)
    trackers: list[str] = field(default_factory=list)
    #: A hub token for private hub files (kept so a restart can fetch the torrent again).
    hub_token: str | None = None
    added: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TorrentRecord:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateDir:
    """The daemon's folder: ``api.token``, ``daemon.json``, ``torrents/``, ``resume/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.torrents = root / "torrents"
        self.resume = root / "resume"

    def prepare(self) -> None:
        """Create the folders, private to this user (tokens and sources live here)."""
        for d in (self.root, self.torrents, self.resume):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    @property
    def token_file(self) -> Path:
        return self.root / "api.token"

    def ensure_token(self) -> tuple[str, bool]:
        """The API token, made on the first start (0600); returns (token, just made)."""
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            token = ""
        if token:
            return token, False
        token = secrets.token_urlsafe(32)
        write_atomic(self.token_file, (token + "\n").encode(), 0o600)
        return token, True

    # -- per-torrent files -----------------------------------------------------------------
    def record_path(self, tid: str) -> Path:
        return self.torrents / f"{tid}.json"

    def torrent_path(self, tid: str) -> Path:
        return self.torrents / f"{tid}.torrent"

    def save(self, record: TorrentRecord) -> None:
        write_atomic(self.record_path(record.id), record.to_json())

    def save_torrent(self, tid: str, data: bytes) -> None:
        write_atomic(self.torrent_path(tid), data)

    def load_torrent(self, tid: str) -> bytes | None:
        try:
            return self.torrent_path(tid).read_bytes()
        except FileNotFoundError:
            return None

    def forget(self, tid: str) -> None:
        for p in (self.record_path(tid), self.torrent_path(tid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def records(self) -> list[TorrentRecord]:
        """Every saved torrent, in queue order; unreadable files are logged and skipped."""
        out = []
        for p in sorted(self.torrents.glob("*.json")):
            try:
                out.append(TorrentRecord.from_json(p.read_bytes()))
            except (OSError, ValueError, TypeError) as exc:
                log.error("skipping %s: %s", p, exc)
        return sorted(out, key=lambda r: (r.order, r.added))

    # -- daemon-wide settings changed through the API -----------------------------------------
    def load_settings(self) -> dict[str, Any]:
        try:
            raw = json.loads((self.root / "daemon.json").read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SwarmhubError(f"{self.root / 'daemon.json'} is damaged ({exc}); fix or "
                                "delete it") from None
        return raw if isinstance(raw, dict) else {}

    def save_settings(self, values: dict[str, Any]) -> None:
        write_atomic(self.root / "daemon.json", json.dumps(values, sort_keys=True).encode())
