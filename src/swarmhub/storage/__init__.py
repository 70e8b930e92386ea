"""Torrent data on disk: piece space <-> files, piece verification, resume data."""

from __future__ import annotations

from swarmhub.storage.files import TorrentStorage
from swarmhub.storage.resume import (
    ResumeData,
    load_resume,
    make_resume,
    pack_bits,
    resume_path,
    save_resume,
    trusted_pieces,
    unpack_bits,
)
from swarmhub.storage.verify import PieceVerifier, recheck

__all__ = [
    "PieceVerifier",
    "ResumeData",
    "TorrentStorage",
    "load_resume",
    "make_resume",
    "pack_bits",
    "recheck",
    "resume_path",
    "save_resume",
    "trusted_pieces",
    "unpack_bits",
]
