"""The exception tree of swarmhub.

Every error a user or a remote party can cause is one of these, with a message that says
what went wrong and what to do::

    SwarmhubError
    ├── BencodeError          malformed bencoded bytes
    ├── MetainfoError         a .torrent / magnet that is not valid (incl. unsafe paths)
    │   └── InconsistentHashesError   a hybrid's v1 and v2 hashes describe different data
    ├── ProtocolError         the peer wire protocol was broken
    │   ├── LocalProtocolError    we misused the API (a bug on our side)
    │   └── RemoteProtocolError   the peer sent something illegal: close that connection
    ├── StorageError          disk trouble (full disk, permissions, missing files)
    ├── TrackerError          a tracker failed or answered with a failure reason
    └── AuthError             missing, wrong or revoked credentials

Sans-IO cores only ever raise ``RemoteProtocolError`` for bad input from the network, so
the asyncio adapters can catch exactly that, drop the one peer and carry on.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BencodeError",
    "InconsistentHashesError",
    "LocalProtocolError",
    "MetainfoError",
    "ProtocolError",
    "RemoteProtocolError",
    "StorageError",
    "SwarmhubError",
    "TrackerError",
]


class SwarmhubError(Exception):
    """Base of every error swarmhub raises on purpose."""


class BencodeError(SwarmhubError):
    """Bytes that are not strict, canonical bencode."""


class MetainfoError(SwarmhubError):
    """A torrent or magnet link that cannot be used as it is."""


class InconsistentHashesError(MetainfoError):
    """A hybrid torrent whose v1 and v2 hashes describe different data (libtorrent:
    "torrent_inconsistent_hashes"): no piece can be served to both kinds of peers."""


class ProtocolError(SwarmhubError):
    """The peer wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol state does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The remote peer broke the protocol; the connection to it must be closed."""


class StorageError(SwarmhubError):
    """Reading or writing torrent data failed."""


class TrackerError(SwarmhubError):
    """A tracker could not be reached or refused the announce."""


class AuthError(SwarmhubError):
    """Credentials are missing, wrong or revoked."""
