"""swarmhub: share files client-server, peer-to-peer, or both at once.

The public API, for scripts and programs (the ``swarmhub`` command uses the same)::

    swarmhub.download(src, dest, **options)   blocking: a .torrent, magnet or hub URL
    await swarmhub.fetch(src, dest, ...)      the same, in async code
    async with swarmhub.Session() as s: ...   many torrents in one process, full control
    swarmhub.create_torrent / read_torrent / make_magnet / parse_magnet
    swarmhub.Settings                         every engine knob (also SWARMHUB_* and config.toml)
    swarmhub.SwarmhubError and its subclasses (see swarmhub.errors)

Names are imported on first use, so ``import swarmhub`` stays cheap for the CLI.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from swarmhub import _compiled

__version__ = "0.1.0"


def _is_get_command(argv: list[str]) -> bool:
    """Whether this process is ``swarmhub get`` (the console script, ``python -m swarmhub``
    while it locates the package, or a caller that named itself ``swarmhub``)."""
    if not argv or (argv[0] != "-m" and os.path.basename(argv[0]) != "swarmhub"):
        return False
    return next((a for a in argv[1:] if not a.startswith("-")), None) == "get"


#: ``swarmhub get`` imports with the collector paused from here, the package's first line
#: (``swarmhub.cli.main`` keeps it paused, ``_startup_done`` resumes it): the CLI's own
#: imports ran ~3 % of the instructions before the first peer in collections that freed
#: nothing (callgrind, startup-43)
if _is_get_command(sys.argv):
    gc.disable()

_compiled.install()  # the mypyc-built hot modules, if `make setup` built them (else pure)

if TYPE_CHECKING:
    from swarmhub.downloads import DownloadResult, Progress, download, fetch
    from swarmhub.engine.session import Session
    from swarmhub.engine.torrent import Torrent, TorrentStatus
    from swarmhub.errors import (
        AuthError,
        BencodeError,
        MetainfoError,
        ProtocolError,
        StorageError,
        SwarmhubError,
        TrackerError,
    )
    from swarmhub.metainfo import (
        Magnet,
        Metainfo,
        TorrentVersion,
        create_torrent,
        load_torrent,
        make_magnet,
        parse_magnet,
        read_torrent,
        torrent_bytes,
    )
    from swarmhub.settings import ConfigError, Settings

#: public name -> the module that defines it
_EXPORTS = {
    "Session": "swarmhub.engine.session",
    "Torrent": "swarmhub.engine.torrent",
    "TorrentStatus": "swarmhub.engine.torrent",
    "AuthError": "swarmhub.errors",
    "BencodeError": "swarmhub.errors",
    "MetainfoError": "swarmhub.errors",
    "ProtocolError": "swarmhub.errors",
    "StorageError": "swarmhub.errors",
    "SwarmhubError": "swarmhub.errors",
    "TrackerError": "swarmhub.errors",
    "DownloadResult": "swarmhub.downloads",
    "Progress": "swarmhub.downloads",
    "download": "swarmhub.downloads",
    "fetch": "swarmhub.downloads",
    "Magnet": "swarmhub.metainfo",
    "Metainfo": "swarmhub.metainfo",
    "TorrentVersion": "swarmhub.metainfo",
    "create_torrent": "swarmhub.metainfo",
    "load_torrent": "swarmhub.metainfo",
    "make_magnet": "swarmhub.metainfo",
    "parse_magnet": "swarmhub.metainfo",
    "read_torrent": "swarmhub.metainfo",
    "torrent_bytes": "swarmhub.metainfo",
    "ConfigError": "swarmhub.settings",
    "Settings": "swarmhub.settings",
}

__all__ = [
    "AuthError",
    "BencodeError",
    "ConfigError",
    "DownloadResult",
    "Magnet",
    "Metainfo",
    "MetainfoError",
    "Progress",
    "ProtocolError",
    "Session",
    "Settings",
    "StorageError",
    "SwarmhubError",
    "Torrent",
    "TorrentStatus",
    "TorrentVersion",
    "TrackerError",
    "__version__",
    "create_torrent",
    "download",
    "fetch",
    "load_torrent",
    "make_magnet",
    "parse_magnet",
    "read_torrent",
    "torrent_bytes",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swarmhub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
