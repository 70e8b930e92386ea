"""Piece I/O of one torrent: assembly buffers, hashing and writing (off the event loop,
but for the smallest pieces), and BEP 52 hash replies.

Apart from the driver (:mod:`swarmhub.engine.torrent`) because it owns the torrent's
largest memory (whole pieces assembled in RAM, bounded by the picker's in-progress pieces
and the core's unverified-bytes limit) and the thread-pool hops; the core decides which
blocks are kept and what a verified or failed piece means.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from swarmhub._records import value_methods
from swarmhub.engine.picker import Block
from swarmhub.engine.services import TorrentServices
from swarmhub.errors import InconsistentHashesError, StorageError, SwarmhubError
from swarmhub.metainfo.merkle import hashes_with_proof, next_pow2, tree_layers, zero_root
from swarmhub.metainfo.model import BLOCK_SIZE, FileEntry, Metainfo
from swarmhub.storage.files import PieceBuffer, TorrentStorage, piece_buffer
from swarmhub.storage.verify import PieceVerifier, derive_piece_layer
from swarmhub.wire import messages as m

__all__ = ["Pieces", "Verdict"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Spare piece buffers kept per torrent (each one piece long).
_SPARE_BUFFERS = 8
#: Pieces shorter than this are hashed and written in batches (see :meth:`Pieces.verify`).
BATCH_BELOW = 256 * 1024
#: Pieces shorter than this are hashed and written on the event loop, through the page
#: cache (see :meth:`Pieces._check_here`).
INLINE_BELOW = 64 * 1024


class Pieces:
    """Buffers of pieces being assembled, and the hash-then-write of finished ones."""

    def __init__(self, meta: Metainfo, storage: TorrentStorage,
                 session: TorrentServices) -> None:
        self.meta = meta
        self.storage = storage
        self.session = session
        self.verifier = PieceVerifier(meta)
        #: Blocks lying wholly inside pad files (the core never requests them).
        self.pad_blocks = _pad_blocks(meta)
        #: Pieces with pad blocks (never received, must read as zeros): always a fresh buffer.
        self._padded = frozenset(i for i, _ in self.pad_blocks)
        #: Verified pieces' buffers, reused: a fresh 1 MiB bytearray is mmap'd, zeroed and
        #: page-faulted in, then unmapped: ~15% of a loopback download's CPU.
        self._spare: list[PieceBuffer] = []
        #: as many as the pieces hashing/writing may hold (else each burst allocates anew)
        self._spare_cap = (_SPARE_BUFFERS
                           + session.settings.max_unverified_bytes // meta.piece_length)
        #: Pieces being assembled from peers' blocks (the core decides what is kept).
        self.buffers: dict[int, PieceBuffer] = {}
        #: Called with each piece that passed and was written, before its buffer is reused.
        self.on_written: Callable[[int, PieceBuffer], None] | None = None
        self._hash_trees: dict[bytes, list[list[bytes]]] = {}
        #: piece layers derived from the data (a torrent without them), by pieces root,
        #: and the roots whose derivation was started (see :meth:`hashes_for`)
        self._derived: dict[bytes, bytes] = {}
        self._deriving: set[bytes] = set()
        #: Pieces shorter than this go through the batch queue (tests lower it).
        self.batch_below = BATCH_BELOW
        #: Pieces shorter than this are checked and written at once, on the loop.
        self.inline_below = INLINE_BELOW
        #: Small pieces waiting for a hash job, and the jobs that take them (see _hash_jobs).
        self._queue: list[_Queued] = []
        self._lock = threading.Lock()
        self._jobs = 0  # hash jobs submitted and not ended
        self._unstarted = 0  # of those, jobs that have not yet taken a batch
        #: Batches the hash jobs took (one thread hand-off and loop wake-up each).
        self.batches = 0

    def clear(self) -> None:
        """Drop every buffer (nothing left to assemble)."""
        self.buffers.clear()
        self._spare.clear()

    async def verify(self, index: int, want_digests: bool, v1: bool = False
                     ) -> tuple[bool, dict[int, bytes] | None]:
        """Hash and write the assembled piece ``index`` (see :meth:`check_and_write`;
        ``v1``: see :meth:`PieceVerifier.check`); raises
        :class:`~swarmhub.errors.StorageError` when the write fails."""
        buf: PieceBuffer | None = self.buffers.pop(index, None)
        if buf is None:
            buf = bytearray(self.meta.piece_size(index))  # nothing kept: fails, blames none
        if self.meta.piece_length < self.inline_below:
            ok, digests = await self._check_here(index, buf, want_digests, v1)
        elif self.meta.piece_length < self.batch_below:
            ok, digests = await self._queue_check(index, buf, want_digests, v1)
        else:
            ok, digests = await self.check_and_write(index, buf, want_digests, v1)
        self._release(index, buf, ok)
        return ok, digests

    def _release(self, index: int, buf: PieceBuffer, ok: bool) -> None:
        """``buf``, piece ``index``, is hashed (and written when ``ok``): tell
        :attr:`on_written`, then keep it as a spare."""
        if ok and self.on_written is not None:
            self.on_written(index, buf)
        if len(buf) == self.meta.piece_length and len(self._spare) < self._spare_cap:
            self._spare.append(buf)  # hashed and written: nothing holds it any more

    def start_verify(self, index: int, want_digests: bool, v1: bool,
                     done: Callable[[int, Verdict | SwarmhubError, bool], None],
                     spawn: Callable[[Awaitable[None]], None]) -> None:
        """:meth:`verify` piece ``index``, then ``done(index, verdict, later)``, the
        verdict being the :class:`StorageError` or :class:`InconsistentHashesError` if
        one was raised: a small piece (``inline_below``) at once (``later`` False), else
        from a task (``spawn``; ``later`` True).

        Why: a lab peer (32 KiB pieces) verifies ~1,000 pieces per 32 MiB, each hashed and
        written on the loop without waiting for anything, yet each made a task (created,
        scheduled, its coroutine run, its done callbacks) only to await nothing."""
        if self.meta.piece_length < self.inline_below and (
                buf := self.buffers.get(index)) is not None:
            try:
                verdict, written = self._check_now(index, buf, want_digests, v1)
            except (StorageError, InconsistentHashesError) as exc:
                done(index, exc, False)
                return
            if written or not verdict[0]:
                del self.buffers[index]
                self._release(index, buf, verdict[0])
                done(index, verdict, False)
            else:  # a selection change holds the files: the write waits, not the hash again
                spawn(self._write_later(index, buf, verdict, done))
            return
        spawn(self._verify_later(index, want_digests, v1, done))

    async def _verify_later(self, index: int, want_digests: bool, v1: bool,
                            done: Callable[[int, Verdict | SwarmhubError, bool], None]
                            ) -> None:
        verdict: Verdict | SwarmhubError
        try:
            verdict = await self.verify(index, want_digests, v1)
        except (StorageError, InconsistentHashesError) as exc:
            verdict = exc
        done(index, verdict, True)

    async def _write_later(self, index: int, buf: PieceBuffer, verdict: Verdict,
                           done: Callable[[int, Verdict | SwarmhubError, bool], None]
                           ) -> None:
        try:
            await self._write(index, buf)
        except StorageError as exc:
            done(index, exc, True)
            return
        self.buffers.pop(index, None)  # (it stayed there while the write waited)
        self._release(index, buf, True)
        done(index, verdict, True)

    def store(self, view: memoryview, blocks: Iterable[Block], starts: Iterable[int],
              keep: Iterable[bool]) -> int:
        """Copy the blocks the core kept (``keep``) from ``view`` (data of ``blocks[k]`` at
        ``starts[k]``) into their pieces' buffers; returns the bytes of all of them."""
        buffers = self.buffers
        nbytes = 0
        at = -1  # the piece of the last block copied (a read's blocks are mostly one piece's)
        buf: PieceBuffer = bytearray()  # (replaced before use: indices are >= 0)
        for (index, begin, n), start, kept in zip(blocks, starts, keep, strict=True):
            nbytes += n
            if kept:
                if index != at:
                    at = index
                    got = buffers.get(index)
                    if got is None:
                        got = buffers[index] = self.new_buffer(index)
                    buf = got
                buf[begin:begin + n] = view[start:start + n]
        return nbytes

    def new_buffer(self, index: int) -> PieceBuffer:
        """A buffer for piece ``index``: a spare one when it fits (every byte of it will be
        overwritten by a block), else a fresh, zeroed one."""
        size = self.meta.piece_size(index)
        if self._spare and size == self.meta.piece_length and index not in self._padded:
            return self._spare.pop()
        return piece_buffer(size)  # page-aligned: written with O_DIRECT as it is

    async def check_and_write(
        self, index: int, buf: PieceBuffer, want_digests: bool, v1: bool = False
    ) -> tuple[bool, dict[int, bytes] | None]:
        """Hash on the hash pool (all cores), then write on the disk pool (see
        :meth:`check_write`). Block digests come back when asked for, and always for a
        failed piece (they catch the liar)."""
        done: concurrent.futures.Future[Verdict] = concurrent.futures.Future()

        def verdict(ok: list[bool]) -> Verdict:
            return ok[0], _block_digests(buf) if want_digests or not ok[0] else None

        self.check_write(index, 1, buf, done, verdict, v1)
        return await asyncio.wrap_future(done)

    def check_write(self, first: int, count: int, buf: PieceBuffer,
                    done: concurrent.futures.Future[_T],
                    result: Callable[[list[bool]], _T], v1: bool = False) -> None:
        """Check pieces ``first .. first + count - 1`` (back to back in ``buf``) on the hash
        pool and write the good ones from the disk pool (one write per stretch of them);
        then ``done`` is settled with ``result(verdicts)``, computed in the hash thread.

        The one way a large piece (peers) or a run of pieces (a web seed) is verified.
        The hash job hands the good pieces to the disk pool itself, so the event loop hears
        once (when written or failed), not twice; the hash thread does not wait for the
        write either (a direct write waits for the device, 1-3 ms per MiB here, and a hash
        thread blocked on it left the next pieces waiting). One job per call: a hybrid
        torrent's piece is one hash (PieceVerifier), and splitting its two hashes over two
        threads gained nothing on two cores. A pool shutting down that drops the job
        settles ``done`` too; an error of the check (a torrent whose hashes disagree)
        settles it with that error, nothing written."""
        view = memoryview(buf)
        pl = self.meta.piece_length
        check = functools.partial(self.verifier.check, v1=v1)

        def write(ok: list[bool], value: _T) -> None:
            if done.cancelled():
                return  # the verify was given up (the torrent is stopping): not wanted
            try:
                self._write_good(first, ok, view)
            except BaseException as exc:  # handed to the awaiting task
                _settle(done, exc)
            else:
                _settle(done, value)

        def hash_job() -> None:
            try:
                if done.cancelled():
                    return
                ok = [check(first + k, view[k * pl:(k + 1) * pl]) for k in range(count)]
                value = result(ok)
                if any(ok):
                    work = self.session.disk_pool.submit(write, ok, value)
                    work.add_done_callback(functools.partial(_dropped, done))
                else:
                    _settle(done, value)
            except BaseException as exc:  # inconsistent hashes, a shut-down pool, a bug
                _settle(done, exc)

        work = self.session.hash_pool.submit(hash_job)
        work.add_done_callback(functools.partial(_dropped, done))

    def _write_good(self, first: int, ok: list[bool], view: memoryview) -> None:
        """(disk pool) The good pieces of ``view`` (piece ``first`` on), one write per
        stretch of them."""
        pl = self.meta.piece_length
        k, n = 0, len(ok)
        while k < n:
            if not ok[k]:
                k += 1
                continue
            end = k
            while end < n and ok[end]:
                end += 1
            self.storage.write((first + k) * pl, view[k * pl:end * pl])
            k = end

    # -- the smallest pieces: hashed and written on the loop ---------------------------------
    # Why: even batched, a 32 KiB piece cost ~165-180 us of CPU above the loop's own (hash
    # pool hop, O_DIRECT write waiting for the device, the loop woken by the thread, the GIL
    # passed back and forth: bench/verify_cpu.py, steady pace), against ~20 us to hash it
    # and ~10 us to copy it into the page cache here. A lab peer (N=32, 32 MiB) has 1,024 of
    # them: a sixth of its CPU, on a machine where CPU sets the swarm's pace. The loop waits
    # for no device: a page-cache write of 32 KiB returns at once (the kernel writes it back
    # later; O_DIRECT saves its copy only for large pieces), and while a selection change
    # holds the files the write goes to the disk pool as before.

    async def _check_here(self, index: int, buf: PieceBuffer, want_digests: bool,
                          v1: bool = False) -> Verdict:
        verdict, written = self._check_now(index, buf, want_digests, v1)
        if verdict[0] and not written:
            await self._write(index, buf)
        return verdict

    def _check_now(self, index: int, buf: PieceBuffer, want_digests: bool, v1: bool
                   ) -> tuple[Verdict, bool]:
        """Hash piece ``index`` here, and write it here when good and the files allow
        (``write_now``): the verdict, and whether it was written."""
        view = memoryview(buf)
        ok = self.verifier.check(index, view, v1=v1)
        digests = _block_digests(buf) if want_digests or not ok else None
        return (ok, digests), ok and self.storage.write_now(index * self.meta.piece_length,
                                                            view)

    async def _write(self, index: int, buf: PieceBuffer) -> None:
        """Write good piece ``index`` on the disk pool (``write_now`` could not)."""
        await asyncio.get_running_loop().run_in_executor(
            self.session.disk_pool, self.storage.write, index * self.meta.piece_length,
            memoryview(buf))

    # -- small pieces: hashed and written in batches ----------------------------------------
    # Why: a 32 KiB piece hashes in ~30 us, but its two thread hand-offs (hash pool, disk
    # pool) and its loop wake-up cost far more: ~300-430 us of CPU and ~12 context
    # switches per piece, paced as in the lab (bench/verify_cpu.py); a lab peer at N=32
    # has 1,024 of them. So small pieces queue here, and a hash job takes *everything*
    # queued when it starts (natural batching: no timer, a piece never waits for a batch
    # to fill; the job is submitted at the end of the loop iteration that queued the first
    # piece), hashes each, writes the good ones itself (a disk-pool hop cost one more
    # wake-up per batch, as in the web seed's runs), and the batch's verdicts reach the
    # loop in one call_soon_threadsafe.

    async def _queue_check(self, index: int, buf: PieceBuffer, want_digests: bool,
                           v1: bool = False) -> Verdict:
        loop = asyncio.get_running_loop()
        item = _Queued(index, buf, memoryview(buf), want_digests, loop.create_future(), v1)
        with self._lock:
            self._queue.append(item)
            # A job that has not started will take this piece too; else start one while
            # a hash thread may be free.
            start = not self._unstarted and self._jobs < max(1, self.session.hash_threads)
            if start:
                self._jobs += 1
                self._unstarted += 1
        if start:
            # Submitted at the end of this loop iteration: the other pieces this iteration
            # completes (a busy process reads many sockets per iteration) join the batch.
            loop.call_soon(self._submit_batch_job, loop)
        return await item.fut

    def _submit_batch_job(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.session.hash_pool.submit(self._hash_jobs, loop)
        except BaseException as exc:  # a shut-down pool: nothing will take the queue
            with self._lock:
                self._jobs -= 1
                self._unstarted -= 1
                batch, self._queue = self._queue, []
            for item in batch:
                item.verdict = exc
            _settle_batch(batch)

    def _hash_jobs(self, loop: asyncio.AbstractEventLoop) -> None:
        """(hash pool) Take the whole queue, hash it, hand it on; again until it is empty."""
        with self._lock:
            self._unstarted -= 1
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._jobs -= 1
                    return
                self.batches += 1
            good: list[_Queued] = []
            for item in batch:
                if item.fut.done():
                    continue  # the verify was given up (the torrent is stopping)
                try:
                    ok = self.verifier.check(item.index, item.view, v1=item.v1)
                    item.verdict = (ok, _block_digests(item.buf)
                                    if item.want_digests or not ok else None)
                    if ok:
                        good.append(item)
                except BaseException as exc:  # a bug: handed to the awaiting task
                    item.verdict = exc
            pl = self.meta.piece_length
            for item in good:
                if item.fut.done():
                    continue  # given up meanwhile: not wanted
                try:
                    self.storage.write(item.index * pl, item.view)
                except BaseException as exc:  # handed to the awaiting task
                    item.verdict = exc
            _post(loop, batch)

    def hashes_for(self, req: m.HashRequest, have: bytes | bytearray) -> bytes | None:
        """Answer a BEP 52 hash request from the piece layers (base layer = piece layer);
        None: reject it.

        A torrent taken without its layers (the hub's short form, see
        :func:`swarmhub.downloads.hub_meta`) rejects requests for a file's layer until it
        holds all of the file (``have``: 1 per piece we hold); the first request after
        that derives the layer from the data on a hash thread, and later ones are answered
        once it is there (a requester asks another peer, or again, after a reject)."""
        meta = self.meta
        leaves_per_piece = meta.piece_length // BLOCK_SIZE
        if req.base_layer != leaves_per_piece.bit_length() - 1:
            return None
        tree = self._hash_trees.get(req.pieces_root)
        if tree is None:
            entry = next((f for f in meta.files if f.pieces_root == req.pieces_root), None)
            if entry is None:
                return None
            layer_hashes = meta.piece_layers.get(req.pieces_root) \
                or self._derived.get(req.pieces_root)
            if layer_hashes is None:
                self._derive_layer(entry, have)
                return None
            hashes = [layer_hashes[i:i + 32] for i in range(0, len(layer_hashes), 32)]
            width = max(1, next_pow2(-(-entry.length // BLOCK_SIZE)) // leaves_per_piece)
            tree = tree_layers(hashes, max(width, len(hashes)), zero_root(leaves_per_piece))
            self._hash_trees[req.pieces_root] = tree
        return hashes_with_proof(tree, req.index, req.length, req.proof_layers)

    def _derive_layer(self, entry: FileEntry, have: bytes | bytearray) -> None:
        """Derive ``entry``'s missing piece layer on the hash pool, once, when we hold all
        of the file (see :meth:`hashes_for`)."""
        root, pl = entry.pieces_root, self.meta.piece_length
        if root is None or root in self._deriving or entry.length <= pl:
            return  # in hand, or not a file with a piece layer
        if not all(have[entry.offset // pl:(entry.end - 1) // pl + 1]):
            return
        self._deriving.add(root)  # one try: a failure is logged, not repeated

        def job() -> None:
            try:
                layer = derive_piece_layer(self.meta, self.storage, entry)
            except Exception as exc:  # a failed read: no layer, the requests stay rejected
                log.warning("%s: cannot derive the piece layer of %s: %s", self.meta.name,
                            "/".join(entry.path), exc)
                return
            if layer is None:
                log.warning("%s: the data of %s does not hash to its v2 pieces root (the "
                            "torrent's v1 and v2 hashes disagree); its hash requests stay "
                            "rejected", self.meta.name, "/".join(entry.path))
            else:
                self._derived[root] = layer

        with contextlib.suppress(RuntimeError):  # a shut-down pool: the torrent is stopping
            self.session.hash_pool.submit(job)


def _pad_blocks(meta: Metainfo) -> list[tuple[int, int]]:
    """Blocks lying wholly inside pad files: never requested, always zeros."""
    out: list[tuple[int, int]] = []
    pl = meta.piece_length
    for f in meta.files:
        if not f.pad or not f.length:
            continue
        first = -(-f.offset // BLOCK_SIZE) * BLOCK_SIZE
        start = first
        while start + BLOCK_SIZE <= f.end or (start < f.end and f.end == meta.total_length):
            out.append((start // pl, start % pl))
            start += BLOCK_SIZE
    return out


#: A piece's check: passed, and its block digests (when asked for, or it failed).
Verdict = tuple[bool, dict[int, bytes] | None]


@value_methods
@dataclass(slots=True, eq=False, repr=False)
class _Queued:
    """A small piece waiting for (or in) a hash batch."""

    index: int
    buf: PieceBuffer
    view: memoryview
    want_digests: bool
    fut: asyncio.Future[Verdict]
    #: check its SHA-1 too (see PieceVerifier.check)
    v1: bool = False
    verdict: Verdict | BaseException | None = None


def _post(loop: asyncio.AbstractEventLoop, batch: list[_Queued]) -> None:
    """(pool thread) Hand a batch's verdicts to the loop: one wake-up for all of them."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
        loop.call_soon_threadsafe(_settle_batch, batch)


def _settle_batch(batch: list[_Queued]) -> None:
    """(event loop) Complete the futures of a batch, except those given up."""
    for item in batch:
        fut, verdict = item.fut, item.verdict
        if fut.done() or verdict is None:
            continue
        if isinstance(verdict, BaseException):
            fut.set_exception(verdict)
        else:
            fut.set_result(verdict)


def _settle(fut: concurrent.futures.Future[_T], result: _T | BaseException) -> None:
    """Complete ``fut`` from a pool thread, unless its awaiting task gave it up."""
    if fut.done():
        return  # cancelled meanwhile: nobody waits for it
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled just now
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _dropped(done: concurrent.futures.Future[Any],
             work: concurrent.futures.Future[None]) -> None:
    """A pool shutting down dropped ``work`` before it ran: whoever waits on ``done``
    (which that work was to settle) is told so instead of waiting for ever."""
    if work.cancelled() and not done.cancel():
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            done.set_exception(concurrent.futures.CancelledError())


def _block_digests(buf: PieceBuffer) -> dict[int, bytes]:
    view = memoryview(buf)
    return {b: hashlib.sha1(view[b:b + BLOCK_SIZE]).digest()
            for b in range(0, len(buf), BLOCK_SIZE)}
