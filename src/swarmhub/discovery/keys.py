"""The keys a torrent is found under by peer discovery (DHT, LSD): one rule for both."""

from __future__ import annotations

from typing import Protocol

__all__ = ["HashedMeta", "public_hashes"]


class HashedMeta(Protocol):
    """What the rule reads of a torrent's metainfo."""

    @property
    def private(self) -> bool: ...
    @property
    def info_hash_v1(self) -> bytes | None: ...
    @property
    def info_hash_v2(self) -> bytes | None: ...


def public_hashes(meta: HashedMeta) -> list[bytes]:
    """The 20-byte hashes a torrent is announced under: v1, and v2 truncated as BEP 52
    says; none for a private torrent (BEP 27: no DHT, PEX or LSD)."""
    if meta.private:
        return []
    hashes = (meta.info_hash_v1, meta.info_hash_v2[:20] if meta.info_hash_v2 else None)
    return [h for h in hashes if h is not None]
