"""Per-peer memory bounds: stop reading from a peer that does not read, and count the
bytes of the piece requests it has queued with us.

Why: every message a peer sends may make us queue a reply (a 16 KiB metadata piece, up to
256 KiB of BEP 52 hashes, a 17-byte reject…). A peer that keeps asking and never reads
made a seeder queue replies without bound (40,000 unread ``ut_metadata`` requests took it
from 80 to 721 MB). :class:`ReadGate` is the backpressure: while more than ``limit`` bytes
wait in the transport's write buffer, the connection neither parses the messages it has
already received nor reads new ones, so TCP's own flow control pushes back on the peer;
it resumes once the buffer drains to the transport's low-water mark (``resume_writing``).
(The piece requests we accept are bounded by bytes too: ``peerstate.RequestQueue``.)
"""

from __future__ import annotations

import asyncio

__all__ = ["BACKLOG", "RATE", "SOON", "UPLOAD_BATCH", "ReadGate", "reply_limit"]

#: Reasons to stop reading: replies the peer leaves unread, replies the socket took at once
#: (the rest waits for a later callback: see ``PeerProtocol._pump``), and the download rate
#: limit. The first two also stop handling what was read already.
BACKLOG = "backlog"
SOON = "soon"
RATE = "rate"
#: Most bytes one upload batch adds past the high-water mark (Uploader.serve writes
#: up to 1 MiB of blocks, the last one up to 128 KiB, once the transport is writable).
UPLOAD_BATCH = 2 << 20


def reply_limit(high: int) -> int:
    """Queued bytes above which a peer counts as not reading, for a transport whose
    uploads wait above ``high``: twice ``high``, and at least one upload batch above it,
    so that a peer that reads normally never trips the gate."""
    return high + max(high, UPLOAD_BATCH)



class ReadGate:
    """Pauses a transport's reading while any reason to do so holds.

    ``limit`` is the number of queued (unsent) bytes above which the peer counts as not
    reading; the transport's own high-water mark (where uploads wait) sits below it, so a
    peer that reads normally never trips it.
    """

    __slots__ = ("_reasons", "_transport", "limit")

    def __init__(self, transport: asyncio.Transport, limit: int) -> None:
        self._transport = transport
        self._reasons: set[str] = set()
        self.limit = limit

    def over(self, pending: int = 0) -> bool:
        """Whether more than ``limit`` bytes wait to be sent (``pending`` not yet handed to
        the transport included): then stop handling the peer's messages."""
        return self._transport.get_write_buffer_size() + pending > self.limit

    def open(self) -> bool:
        """Not paused for the backlog (or SOON) and not :meth:`over`: the peer's messages
        may be handled. One call where the receive path asked ``paused`` and ``over`` (a
        lab peer asks ~16,000 times per 32 MiB)."""
        reasons = self._reasons
        return BACKLOG not in reasons and SOON not in reasons and \
            self._transport.get_write_buffer_size() <= self.limit

    def room(self, pending: int = 0) -> int:
        """Bytes that may still be queued before :meth:`over` (negative: over by that)."""
        return self.limit - self._transport.get_write_buffer_size() - pending

    def paused(self, reason: str) -> bool:
        return reason in self._reasons

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self._transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and not self._transport.is_closing():
            self._transport.resume_reading()
