"""Message stream encryption between asyncio and :class:`PeerProtocol`, as a separate layer.

Why a layer: the peer protocol (flow control, corking, read gates) stays unaware of
encryption. :class:`MSELayer` is the protocol asyncio talks to; it runs the sans-IO
:class:`~swarmhub.wire.mse.MSEHandshake` and hands the peer protocol a
:class:`CipherTransport` whose writes are held until the handshake is done and then go out
through RC4 (one ``update()`` per write, one per received chunk, in ``cryptography``'s C
code) or untouched when plaintext was selected. The engine plugs in at two points:
:func:`accept` builds the protocol for an incoming connection (it tells a plaintext
handshake from an encrypted one by its first 20 bytes) and :func:`dial` opens an outgoing
one (encrypted first; plaintext again when that fails and the mode is ``prefer``).

Modes (``Settings.encryption``): ``prefer`` accepts both and offers RC4 or plaintext when
dialing; ``require`` accepts and offers RC4 only and refuses plaintext peers; ``off`` is
the plain :class:`PeerProtocol` with no layer at all.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from swarmhub.engine.peer import PeerProtocol
from swarmhub.wire.mse import (
    CRYPTO_PLAINTEXT,
    CRYPTO_RC4,
    EncryptionError,
    Established,
    MSEHandshake,
    is_plaintext_handshake,
    skey_lookup,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext

    from swarmhub.engine.services import ListenerServices, PeerHost, PeerServices

__all__ = ["CipherTransport", "MSELayer", "accept", "dial", "open_stream"]

log = logging.getLogger(__name__)


class _Phase(enum.Enum):
    DETECT = enum.auto()  # incoming: plaintext or encrypted? (at most 20 bytes buffered)
    HANDSHAKE = enum.auto()
    RC4 = enum.auto()
    PLAIN = enum.auto()
    CLOSED = enum.auto()


def _crypto(mode: str) -> int:
    return CRYPTO_RC4 if mode == "require" else CRYPTO_RC4 | CRYPTO_PLAINTEXT


class CipherTransport(asyncio.Transport):
    """The transport the peer protocol writes to: everything but writes is the socket's."""

    def __init__(self, layer: MSELayer) -> None:
        super().__init__()
        self._layer = layer

    @property
    def layer(self) -> MSELayer:
        return self._layer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._layer.send(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._layer.send_many(list_of_data)

    def get_write_buffer_size(self) -> int:
        return self._layer.raw.get_write_buffer_size() + len(self._layer.held)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._layer.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._layer.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._layer.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._layer.raw.pause_reading()

    def resume_reading(self) -> None:
        self._layer.raw.resume_reading()

    def is_reading(self) -> bool:
        return self._layer.raw.is_reading()

    def is_closing(self) -> bool:
        return self._layer.raw.is_closing()

    def close(self) -> None:
        self._layer.raw.close()

    def abort(self) -> None:
        self._layer.raw.abort()

    def can_write_eof(self) -> bool:
        return False

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.inner


class MSELayer(asyncio.Protocol):
    """Runs the encrypted handshake for ``inner``, then encrypts and decrypts its stream.

    Outgoing when ``skey`` (the torrent's info hash) is given: ``inner`` is connected at
    once and what it writes first (its BitTorrent handshake) rides in the handshake as the
    initial payload. ``negotiated`` resolves to None once the stream is set up, or to the
    reason the handshake failed (what :func:`dial` falls back on).
    """

    def __init__(self, inner: asyncio.Protocol | PeerProtocol, *, mode: str,
                 skey: bytes | None = None, skeys: Callable[[], Iterable[bytes]] = tuple,
                 prefer_rc4: bool = False) -> None:
        self.inner = inner
        self.mode = mode
        self.prefer_rc4 = prefer_rc4
        self.skey = skey
        self._skeys = skeys
        self.negotiated: asyncio.Future[str | None] = (
            asyncio.get_running_loop().create_future())
        self.raw: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.held = bytearray()  # the inner protocol's writes until the handshake is done
        #: What the inner protocol writes to.
        self.transport = CipherTransport(self)
        self.addr = "?"
        self._phase = _Phase.DETECT
        self._detect = bytearray()
        self._hs: MSEHandshake | None = None
        self._enc: CipherContext | None = None
        self._dec: CipherContext | None = None
        self._failure: EncryptionError | None = None

    @property
    def encrypted(self) -> bool:
        """True once the payload stream runs through RC4."""
        return self._phase is _Phase.RC4

    # -- asyncio callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            self.addr = f"{peer[0]}:{peer[1]}"
        self.inner.connection_made(self.transport)
        if self.skey is not None and self._phase is _Phase.DETECT:
            ia = bytes(self.held) if len(self.held) <= 0xFFFF else b""
            del self.held[:len(ia)]
            self._hs = MSEHandshake.initiator(self.skey, crypto=_crypto(self.mode),
                                              initial_payload=ia)
            self._phase = _Phase.HANDSHAKE
            self.raw.write(self._hs.data_to_send())

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is _Phase.RC4:
            assert self._dec is not None
            self.inner.data_received(self._dec.update(data))
        elif phase is _Phase.PLAIN:
            self.inner.data_received(data)
        elif phase is _Phase.HANDSHAKE:
            assert self._hs is not None
            self._hs.receive_data(data)
            self._advance()
        elif phase is _Phase.DETECT:
            self._classify(data)

    def eof_received(self) -> bool | None:
        if self._phase is _Phase.HANDSHAKE:
            assert self._hs is not None
            self._hs.receive_data(b"")
            self._advance()
            return None
        if self._phase is _Phase.DETECT:
            self._fail("peer closed the connection before its handshake")
            return None
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.negotiated.done():
            self.negotiated.set_result(f"connection lost: {exc}" if exc else "connection closed")
        self._phase = _Phase.CLOSED
        self.inner.connection_lost(exc or self._failure)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- the inner protocol's writes ------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> None:
        phase = self._phase
        if phase is _Phase.RC4:
            assert self._enc is not None
            self.raw.write(self._enc.update(data))
        elif phase is _Phase.PLAIN:
            self.raw.write(data)
        elif phase is not _Phase.CLOSED:
            self.held += data

    def send_many(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        phase = self._phase
        if phase is _Phase.RC4:
            update = self._enc.update  # type: ignore[union-attr]
            self.raw.writelines([update(p) for p in parts])
        elif phase is _Phase.PLAIN:
            self.raw.writelines(parts)
        elif phase is not _Phase.CLOSED:
            for p in parts:
                self.held += p

    def abort(self, reason: str) -> None:
        """Give up on the handshake (a timeout, say) and drop the connection."""
        self._fail(reason)

    # -- internals ----------------------------------------------------------------------
    def _classify(self, data: bytes) -> None:
        self._detect += data
        verdict = is_plaintext_handshake(bytes(self._detect[:20]))
        if verdict is None:
            return
        first, self._detect = bytes(self._detect), bytearray()
        if verdict:
            if self.mode == "require":
                log.info("refusing a plaintext connection from %s: encryption is required "
                         "(--encryption require)", self.addr)
                self._fail("plaintext peer refused: encryption is required")
                return
            self._established(None, None, first)
            return
        hashes = self._skeys()
        self._hs = MSEHandshake.responder(skey_lookup(hashes), crypto=_crypto(self.mode),
                                          prefer_rc4=self.prefer_rc4)
        self._phase = _Phase.HANDSHAKE
        self._hs.receive_data(first)
        self._advance()

    def _advance(self) -> None:
        hs = self._hs
        assert hs is not None
        try:
            ev = hs.next_event()
        except EncryptionError as exc:
            self._fail(str(exc))
            return
        out = hs.data_to_send()
        if out:
            self.raw.write(out)
        if not isinstance(ev, Established):
            return  # NEED_DATA
        self._hs = None
        log.debug("peer %s: %s handshake done, %s stream", self.addr,
                  "outgoing" if self.skey is not None else "incoming",
                  "rc4" if ev.crypto == CRYPTO_RC4 else "plaintext")
        self._established(ev.encrypt, ev.decrypt, ev.initial_payload)

    def _established(self, enc: CipherContext | None, dec: CipherContext | None,
                     payload: bytes) -> None:
        self._enc, self._dec = enc, dec
        self._phase = _Phase.RC4 if enc is not None else _Phase.PLAIN
        if not self.negotiated.done():
            self.negotiated.set_result(None)
        if self.held:
            held, self.held = bytes(self.held), bytearray()
            self.send(held)
        if payload:
            self.inner.data_received(payload)
        if enc is None and isinstance(self.inner, asyncio.BufferedProtocol) \
                and self._phase is _Phase.PLAIN and not self.raw.is_closing():
            # Plaintext from here on: the socket may read straight into the inner protocol's
            # buffer (its writes still come through us, unchanged).
            self.raw.set_protocol(self.inner)

    def _fail(self, reason: str) -> None:
        if self._phase is _Phase.CLOSED:
            return
        log.debug("peer %s: encrypted handshake failed: %s", self.addr, reason)
        self._phase = _Phase.CLOSED
        self._failure = EncryptionError(reason)
        if not self.negotiated.done():
            self.negotiated.set_result(reason)
        self.raw.abort()


def _session_hashes(session: ListenerServices) -> set[bytes]:
    """Every SKEY an incoming peer may use: each torrent's v1 and truncated v2 hash."""
    out: set[bytes] = set()
    for t in session.torrents.values():
        meta = t.meta
        out.add(meta.info_hash)
        if meta.info_hash_v1:
            out.add(meta.info_hash_v1)
        if meta.info_hash_v2:
            out.add(meta.info_hash_v2[:20])
    return out


def accept(session: ListenerServices) -> asyncio.BaseProtocol:
    """The protocol for one incoming connection (the listening socket's factory)."""
    inner = PeerProtocol(session)
    mode = session.settings.encryption
    if mode == "off":
        return inner
    return MSELayer(inner, mode=mode, skeys=lambda: _session_hashes(session),
                    prefer_rc4=session.settings.prefer_rc4)


async def _encrypted(inner: asyncio.Protocol | PeerProtocol, mode: str, skey: bytes,
                     addr: tuple[str, int], timeout: float) -> MSELayer | str:
    """Connect ``inner`` through an encrypted handshake: the layer once it is set up, or why
    it failed (that connection is then closed). OSError/TimeoutError: no connection at all."""
    loop = asyncio.get_running_loop()
    layer = MSELayer(inner, mode=mode, skey=skey)
    await asyncio.wait_for(loop.create_connection(lambda: layer, *addr), timeout)
    try:
        reason = await asyncio.wait_for(asyncio.shield(layer.negotiated), timeout)
    except TimeoutError:
        reason = "no answer to the encrypted handshake"
        layer.abort(reason)
    if reason is None:
        return layer
    if mode == "require":
        log.info("peer %s:%d: encrypted handshake failed (%s); not trying plaintext "
                 "(--encryption require)", addr[0], addr[1], reason)
    else:
        log.debug("peer %s:%d: encrypted handshake failed (%s); retrying in plaintext",
                  addr[0], addr[1], reason)
    return reason


async def dial(session: PeerServices, torrent: PeerHost, addr: tuple[str, int],
               timeout: float) -> None:
    """Connect to a peer: encrypted first unless the mode is ``off``; in ``prefer`` mode a
    failed encrypted handshake is retried once in plaintext, as mainstream clients do.
    Raises OSError or TimeoutError when the peer cannot be reached at all."""
    mode = session.settings.encryption
    if mode != "off":
        got = await _encrypted(PeerProtocol(session, torrent), mode, torrent.meta.info_hash,
                               addr, timeout)
        if isinstance(got, MSELayer) or mode == "require":
            return
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(
        loop.create_connection(lambda: PeerProtocol(session, torrent), *addr), timeout)


async def open_stream(addr: tuple[str, int], skey: bytes, mode: str, timeout: float
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` with the same encryption policy as :func:`dial` (for
    fetching a magnet's metadata). Raises OSError or TimeoutError, or
    :class:`EncryptionError` when ``require`` found no encrypted way in."""
    if mode != "off":
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        proto = asyncio.StreamReaderProtocol(reader)
        got = await _encrypted(proto, mode, skey, addr, timeout)
        if isinstance(got, MSELayer):
            return reader, asyncio.StreamWriter(got.transport, proto, reader, loop)
        if mode == "require":
            raise EncryptionError(f"encrypted handshake failed: {got}")
    return await asyncio.wait_for(asyncio.open_connection(*addr), timeout)
