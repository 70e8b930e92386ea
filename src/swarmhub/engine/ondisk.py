"""What a torrent has on disk: its files opened, its pieces found (resume data, then a
recheck of the rest), and its resume data saved.

Apart from the driver (:mod:`swarmhub.engine.torrent`): start-up checking is a one-off
of blocking file work on the thread pools, and the resume file's name and format are
the storage layer's business, not the swarm's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from swarmhub.engine.services import TorrentServices
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo
from swarmhub.storage.files import TorrentStorage
from swarmhub.storage.resume import (
    ResumeData,
    load_resume,
    make_resume,
    resume_path,
    save_resume,
    trusted_pieces,
)
from swarmhub.storage.verify import recheck

__all__ = ["OnDisk"]

log = logging.getLogger(__name__)


class OnDisk:
    """One torrent's files in one folder, and the resume file that goes with them."""

    def __init__(self, session: TorrentServices, meta: Metainfo, storage: TorrentStorage,
                 save_path: Path) -> None:
        self.session = session
        self.meta = meta
        self.storage = storage
        # One resume file per (torrent, folder): a seed and a download of the same torrent
        # in two folders must not overwrite each other's state.
        folder = hashlib.sha1(str(save_path.resolve()).encode()).hexdigest()[:12]
        base = resume_path(session.state_dir, meta.info_hash)
        self.resume_file = base.with_name(f"{base.stem}-{folder}{base.suffix}")
        #: what the resume file holds since our last save (None: not saved yet)
        self._saved: ResumeData | None = None
        #: the pieces of our last successful save, and the lock that orders saves
        self._saved_have: bytes | None = None
        self._saving = asyncio.Lock()

    async def open(self, seed_mode: bool, wanted: list[bool],
                   prio: Callable[[int], int]) -> bytearray:
        """Open the files (``wanted``: per data file) and return which pieces we have
        (all in seed mode); pieces whose ``prio`` is 0 are not worth hashing."""
        loop = asyncio.get_running_loop()
        pool = self.session.disk_pool
        existed = await loop.run_in_executor(pool, self._open_files, wanted, seed_mode)
        n = self.meta.num_pieces
        have = bytearray(b"\x01" * n) if seed_mode else bytearray(n)
        if existed and not seed_mode:
            resume = load_resume(self.resume_file)
            if resume is not None and resume.info_hash == self.meta.info_hash:
                have = await loop.run_in_executor(
                    pool, trusted_pieces, resume, self.meta, self.storage)
            todo = [i for i in range(n) if not have[i] and prio(i)]
            if todo:
                threads = self.session.hash_threads
                checked = await loop.run_in_executor(
                    None, lambda: recheck(self.meta, self.storage, only=todo, threads=threads))
                for i in todo:
                    if checked[i]:
                        have[i] = 1
        return have

    def _open_files(self, wanted: list[bool], seed_mode: bool) -> bool:
        """(disk pool) Open the files; True if any existed before. One hand-off, not
        three: each cost a thread wake-up on the path to a download's first request."""
        existed = self.storage.exists()
        self.storage.set_selection(wanted)
        self.storage.open(not seed_mode)
        return existed

    async def save(self, have: bytearray) -> None:
        """Save the resume data (a failure is logged: the next start rechecks). Data equal
        to what our last save wrote is not written again: a ``get`` that stops right
        after completing saved at completion, and the second atomic write (two fsyncs)
        cost 9-20 ms of its exit on a busy machine. Saves run one at a time, and one
        whose pieces are those the last save wrote does nothing at all: its sync, stats
        and thread hop waited behind the completion's save (up to 50 ms of a ``get``'s
        exit on a busy machine); only other processes could have changed the files since,
        and the mtimes saved then make the next start recheck those.

        The files' sync runs on its own disk-pool thread while the record is written
        and synced to its temp file, which takes the old one's place only once both are
        durable (a piece is claimed only once its bytes are); the rename is left
        to the file system (``sync_folder=False``: a record lost in a crash just then
        means a recheck). A completing ``get`` waits for this at exit: three journal
        commits in a row (data, record, folder) were ~16 ms there, at load; one now."""
        loop = asyncio.get_running_loop()
        snapshot = bytes(have)
        pool = self.session.disk_pool

        def work(synced: concurrent.futures.Future[None]) -> None:
            try:
                # stats while the sync runs: a sync changes no size or mtime
                data = make_resume(self.meta, self.storage, snapshot, sync=False)
                if data != self._saved:
                    save_resume(self.resume_file, data, before_replace=synced.result,
                                sync_folder=False)
                    self._saved = data
            finally:  # not done before the sync is (its error, if any, first)
                synced.result()

        async with self._saving:
            if snapshot == self._saved_have:
                return
            # submitted first: with one disk thread, it runs before the job that waits on it
            synced = pool.submit(self.storage.sync)
            try:
                await loop.run_in_executor(pool, work, synced)
            except (OSError, SwarmhubError) as exc:
                log.warning("%s: could not save resume data: %s", self.meta.name, exc)
            else:
                self._saved_have = snapshot
