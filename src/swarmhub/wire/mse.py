"""Message Stream Encryption (MSE/PE), sans-IO: the encrypted handshake of mainstream clients.

Why: aria2 opens every connection encrypted, and users of libtorrent, qBittorrent and
transmission can require it. This is the de-facto protocol (Vuze wiki "Message Stream
Encryption"), not a BEP. A is the side that connects, B the side that accepts::

    1 A->B  Ya, PadA
    2 B->A  Yb, PadB
    3 A->B  HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
            ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
    4 B->A  ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload stream)
    5 A->B  ENCRYPT2(payload stream)

Y = G^X mod P is a Diffie-Hellman public key (P a 768-bit prime, G = 2), S the shared
secret as 96 big-endian bytes, SKEY the torrent's info hash (v1, or v2 truncated to 20
bytes), HASH SHA-1, VC eight zero bytes. ENCRYPT is RC4 keyed with HASH('keyA', S, SKEY)
from A to B and HASH('keyB', S, SKEY) from B to A, its first 1024 bytes of keystream
discarded. ENCRYPT2 is the method B selected: RC4 (the same keystreams carry on) or
plaintext. The pads are 0-512 bytes, so the sides resynchronise by searching for a known
pattern (B for HASH('req1', S), A for ENCRYPT(VC)) within a bounded window.

:class:`MSEHandshake` works like ``h11.Connection``: :meth:`~MSEHandshake.receive_data`
takes bytes (``b""`` = EOF), :meth:`~MSEHandshake.next_event` returns :data:`NEED_DATA` or
:class:`Established`, and raises :class:`EncryptionError` (a ``RemoteProtocolError``) once
the peer broke the protocol; :meth:`~MSEHandshake.data_to_send` returns what to write.
Nothing here touches a socket, a clock or a logger.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from swarmhub._records import value_methods
from swarmhub.errors import LocalProtocolError, RemoteProtocolError
from swarmhub.wire.connection import NEED_DATA, Sentinel  # the wire's one "need more"

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext

__all__ = [
    "CRYPTO_PLAINTEXT",
    "CRYPTO_RC4",
    "MAX_PAD",
    "PLAINTEXT_PREFIX",
    "EncryptionError",
    "Established",
    "MSEHandshake",
    "Rc4",
    "Role",
    "is_plaintext_handshake",
    "rc4",
    "skey_lookup",
]

#: The 768-bit MODP prime of the protocol (RFC 2409's first Oakley group).
P: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22"
    "514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7E"
    "C6F44C42E9A63A36210000000000090563", 16)
G: Final = 2
KEY_LEN: Final = 96
VC: Final = bytes(8)
#: Longest PadA..PadD the spec allows; also what bounds the resynchronisation search.
MAX_PAD: Final = 512
CRYPTO_PLAINTEXT: Final = 0x01
CRYPTO_RC4: Final = 0x02
#: What a plaintext BitTorrent handshake starts with (BEP 3).
PLAINTEXT_PREFIX: Final = b"\x13BitTorrent protocol"
_DISCARD: Final = bytes(1024)
_HASH_LEN: Final = 20


class EncryptionError(RemoteProtocolError):
    """The peer broke the encrypted handshake (or hung up during it)."""


class Role(enum.Enum):
    INITIATOR = "initiator"  # A: we connected
    RESPONDER = "responder"  # B: we accepted


class _State(enum.Enum):
    WAIT_KEY = enum.auto()  # their public key
    SYNC = enum.auto()  # A: ENCRYPT(VC) after PadB; B: HASH('req1', S) after PadA
    SKEY = enum.auto()  # B: HASH('req2', SKEY) xor HASH('req3', S)
    PROVIDE = enum.auto()  # B: VC, crypto_provide, len(PadC)
    PAD_C = enum.auto()  # B: PadC, len(IA)
    IA = enum.auto()  # B: the initial payload
    SELECT = enum.auto()  # A: crypto_select, len(PadD)
    PAD_D = enum.auto()  # A: PadD
    DONE = enum.auto()
    ERROR = enum.auto()


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Established:
    """The handshake is complete.

    ``encrypt``/``decrypt`` carry on the RC4 keystreams for the payload stream, or are
    None when plaintext was selected. ``initial_payload`` is the payload received so far,
    already decrypted (B: the IA and anything after it; A: what followed PadD). ``skey`` is
    the info hash the connection is for.
    """

    crypto: int
    encrypt: CipherContext | None
    decrypt: CipherContext | None
    initial_payload: bytes
    skey: bytes


#: Bytes one :meth:`Rc4.update` takes in Python; a longer input (an initiator's IA may
#: be 64 KiB) moves the keystream to cryptography's ARC4 first.
_PY_RC4_MAX: Final = 4096


class Rc4:
    """An RC4 keystream with its first 1024 bytes already discarded (as MSE requires).

    In Python while the input is short: a handshake runs a few hundred bytes through it
    (~1 ms), where importing cryptography's ARC4 cost 6-12 ms of each process whose
    connections then select plaintext (the default: ``prefer_rc4`` is off). A long input,
    or :meth:`fast` for an RC4 payload stream, carries the same keystream on in
    cryptography's."""

    __slots__ = ("_ctx", "_i", "_j", "_key", "_pos", "_s")

    def __init__(self, key: bytes, *, python: bool = True) -> None:
        self._key, self._i, self._j, self._pos = key, 0, 0, 0
        self._ctx: CipherContext | None = None
        if not python:  # cryptography's from the start
            self._s: list[int] = []
            self._pos = len(_DISCARD)
            self.fast()
            return
        s = self._s = list(range(256))
        j, n = 0, len(key)
        for i in range(256):  # the key schedule
            j = (j + s[i] + key[i % n]) & 255
            s[i], s[j] = s[j], s[i]
        self._stream(len(_DISCARD))

    def _stream(self, n: int) -> bytes:
        s, i, j = self._s, self._i, self._j
        out = bytearray(n)
        for k in range(n):
            i = (i + 1) & 255
            si = s[i]
            j = (j + si) & 255
            sj = s[j]
            s[i], s[j] = sj, si
            out[k] = s[(si + sj) & 255]
        self._i, self._j = i, j
        self._pos += n
        return bytes(out)

    def update(self, data: bytes) -> bytes:
        """``data`` XOR the next ``len(data)`` keystream bytes."""
        if self._ctx is None and len(data) > _PY_RC4_MAX:
            self._ctx = self.fast()
        if self._ctx is not None:
            return self._ctx.update(data)
        return _xor(data, self._stream(len(data))) if data else b""

    def fast(self) -> CipherContext:
        """cryptography's ARC4 at the same point of the keystream (this one's later
        updates go through it too)."""
        if self._ctx is not None:
            return self._ctx
        # imported here: cryptography costs 6-12 ms that a plaintext stream never needs
        from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4  # cryptography >= 43
        from cryptography.hazmat.primitives.ciphers import Cipher

        ctx = self._ctx = Cipher(ARC4(self._key), mode=None).encryptor()
        ctx.update(bytes(self._pos))
        return ctx


#: Keystreams made in Python before cryptography's take over for good (~0.5 ms each,
#: cryptography's import 6-12 ms once): a get that dials one peer (both sides of one
#: handshake in a test) never imports it; a swarm's peer with 50 connections would pay
#: ~50 ms in Python.
_PY_KEYSTREAMS = [4]


def rc4(key: bytes) -> Rc4:
    """An RC4 keystream with its first 1024 bytes already discarded (as MSE requires)."""
    left = _PY_KEYSTREAMS
    if left[0] <= 0:
        return Rc4(key, python=False)
    left[0] -= 1
    return Rc4(key)


def _sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def is_plaintext_handshake(first: bytes) -> bool | None:
    """Classify a connection by its first bytes: True for a plaintext BitTorrent
    handshake, False for anything else (an encrypted one), None while undecided."""
    n = min(len(first), len(PLAINTEXT_PREFIX))
    if first[:n] != PLAINTEXT_PREFIX[:n]:
        return False
    return True if n == len(PLAINTEXT_PREFIX) else None


def skey_lookup(skeys: Iterable[bytes]) -> Callable[[bytes], bytes | None]:
    """A responder's lookup from ``HASH('req2', SKEY)`` to SKEY over the given info hashes."""
    table = {_sha1(b"req2", k): k for k in skeys}
    return table.get


def _describe(crypto: int) -> str:
    names = [n for bit, n in ((CRYPTO_PLAINTEXT, "plaintext"), (CRYPTO_RC4, "rc4")) if crypto & bit]
    return "+".join(names) or f"none (0x{crypto:x})"


class MSEHandshake:
    """One side of one encrypted handshake; build it with :meth:`initiator` or
    :meth:`responder`. The first :meth:`data_to_send` of an initiator is Ya + PadA."""

    def __init__(self, role: Role, *, crypto: int, skey: bytes | None = None,
                 lookup: Callable[[bytes], bytes | None] | None = None,
                 initial_payload: bytes = b"", private_key: int | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 prefer_rc4: bool = True) -> None:
        if not crypto & (CRYPTO_PLAINTEXT | CRYPTO_RC4):
            raise LocalProtocolError(f"no crypto method to offer or accept: 0x{crypto:x}")
        if len(initial_payload) > 0xFFFF:
            raise LocalProtocolError("the initial payload is limited to 65535 bytes")
        self.role = role
        self.crypto = crypto
        self.prefer_rc4 = prefer_rc4
        self.skey = skey
        self._lookup = lookup
        self._ia = initial_payload
        self._random = random_bytes
        x = private_key if private_key is not None else int.from_bytes(random_bytes(20), "big")
        self._x = x or 1
        self._state = _State.WAIT_KEY
        self._buf = bytearray()
        self._out = bytearray()
        self._eof = False
        self._error = ""
        self._secret = b""
        self._sync = b""  # the pattern SYNC searches for
        self._enc: Rc4 | None = None
        self._dec: Rc4 | None = None
        self._provide = 0
        self._pad = 0
        self._ia_len = 0
        self._select = 0
        if role is Role.INITIATOR:
            self._out += self._public_key() + self._padding()

    @classmethod
    def initiator(cls, skey: bytes, *, crypto: int = CRYPTO_RC4 | CRYPTO_PLAINTEXT,
                  initial_payload: bytes = b"", private_key: int | None = None,
                  random_bytes: Callable[[int], bytes] = os.urandom) -> MSEHandshake:
        """We connect for torrent ``skey``, offering ``crypto``; ``initial_payload`` (our
        BitTorrent handshake, usually) rides along in step 3 and saves a round trip."""
        if len(skey) != _HASH_LEN:
            raise LocalProtocolError("SKEY must be a 20-byte info hash")
        return cls(Role.INITIATOR, crypto=crypto, skey=skey, initial_payload=initial_payload,
                   private_key=private_key, random_bytes=random_bytes)

    @classmethod
    def responder(cls, lookup: Callable[[bytes], bytes | None], *,
                  crypto: int = CRYPTO_RC4 | CRYPTO_PLAINTEXT, private_key: int | None = None,
                  random_bytes: Callable[[int], bytes] = os.urandom,
                  prefer_rc4: bool = True) -> MSEHandshake:
        """We accepted a connection; ``lookup`` maps ``HASH('req2', SKEY)`` to an info
        hash of ours (:func:`skey_lookup`); ``crypto`` is what we accept. When the peer
        offers both, we select RC4 if ``prefer_rc4``, else plaintext (libtorrent's default:
        the headers are still obfuscated, and the payload skips RC4's CPU cost)."""
        return cls(Role.RESPONDER, crypto=crypto, lookup=lookup, private_key=private_key,
                   random_bytes=random_bytes, prefer_rc4=prefer_rc4)

    # -- the h11-style interface --------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means it closed the connection."""
        if self._state is _State.DONE:
            raise LocalProtocolError("the handshake is over: give the bytes to the payload")
        if data:
            if self._eof:
                raise LocalProtocolError("data after EOF")
            self._buf += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Sentinel | Established:
        if self._state is _State.ERROR:
            raise EncryptionError(self._error)
        if self._state is _State.DONE:
            raise LocalProtocolError("the handshake is over")
        try:
            step = self._step_initiator if self.role is Role.INITIATOR else self._step_responder
            while True:
                result = step()
                if result is not None:
                    return result
        except EncryptionError as exc:
            self._state = _State.ERROR
            self._error = str(exc)
            raise

    # -- shared pieces ------------------------------------------------------------------
    def _public_key(self) -> bytes:
        return pow(G, self._x, P).to_bytes(KEY_LEN, "big")

    def _padding(self) -> bytes:
        n = int.from_bytes(self._random(2), "big") % (MAX_PAD + 1)
        return self._random(n)

    def _need(self, n: int, what: str) -> bool:
        """True when ``n`` bytes are buffered; raise if they never will be."""
        if len(self._buf) >= n:
            return True
        if self._eof:
            raise EncryptionError(f"peer closed the connection during the encrypted "
                                  f"handshake (waiting for {what})")
        return False

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_key(self) -> bool:
        if not self._need(KEY_LEN, "its public key"):
            return False
        y = int.from_bytes(self._take(KEY_LEN), "big")
        if not 1 < y < P - 1:
            raise EncryptionError("peer sent a degenerate Diffie-Hellman public key")
        self._secret = pow(y, self._x, P).to_bytes(KEY_LEN, "big")
        return True

    def _find_sync(self, what: str) -> bool:
        """Find the sync pattern within PadX's bound; drop everything up to its end."""
        window = MAX_PAD + len(self._sync)
        i = self._buf.find(self._sync, 0, window)
        if i < 0:
            if len(self._buf) >= window:
                raise EncryptionError(f"no {what} within {MAX_PAD} bytes of padding "
                                      "(not an MSE peer, or another torrent's keys)")
            self._need(window, what)  # raises at EOF
            return False
        del self._buf[:i + len(self._sync)]
        return True

    def _keys(self, skey: bytes) -> tuple[Rc4, Rc4]:
        a = rc4(_sha1(b"keyA", self._secret, skey))
        b = rc4(_sha1(b"keyB", self._secret, skey))
        return (a, b) if self.role is Role.INITIATOR else (b, a)

    def _finish(self) -> Established:
        assert self._dec is not None and self.skey is not None
        rest = self._take(len(self._buf))
        enc: CipherContext | None
        dec: CipherContext | None
        if self._select == CRYPTO_RC4:
            assert self._enc is not None
            enc, dec = self._enc.fast(), self._dec.fast()
            payload = self._ia + (dec.update(rest) if rest else b"")
        else:
            enc = dec = None
            payload = self._ia + rest
        self._ia = b""
        self._state = _State.DONE
        return Established(self._select, enc, dec, payload, self.skey)

    # -- A: we connected ----------------------------------------------------------------
    def _step_initiator(self) -> Sentinel | Established | None:
        st = self._state
        if st is _State.WAIT_KEY:
            if not self._read_key():
                return NEED_DATA
            assert self.skey is not None
            self._enc, self._dec = self._keys(self.skey)
            ia, self._ia = self._ia, b""
            self._out += _sha1(b"req1", self._secret)
            self._out += _xor(_sha1(b"req2", self.skey), _sha1(b"req3", self._secret))
            self._out += self._enc.update(
                VC + self.crypto.to_bytes(4, "big") + b"\0\0" + len(ia).to_bytes(2, "big") + ia)
            self._sync = self._dec.update(VC)
            self._state = _State.SYNC
        elif st is _State.SYNC:
            if not self._find_sync("encrypted VC"):
                return NEED_DATA
            self._state = _State.SELECT
        elif st is _State.SELECT:
            if not self._need(6, "crypto_select"):
                return NEED_DATA
            assert self._dec is not None
            field = self._dec.update(self._take(6))
            select, self._pad = int.from_bytes(field[:4], "big"), int.from_bytes(field[4:], "big")
            if select not in (CRYPTO_PLAINTEXT, CRYPTO_RC4) or not select & self.crypto:
                raise EncryptionError(f"peer selected {_describe(select)}, we offered "
                                      f"{_describe(self.crypto)}")
            if self._pad > MAX_PAD:
                raise EncryptionError(f"PadD of {self._pad} bytes (at most {MAX_PAD})")
            self._select = select
            self._state = _State.PAD_D
        elif st is _State.PAD_D:
            if not self._need(self._pad, "PadD"):
                return NEED_DATA
            assert self._dec is not None
            self._dec.update(self._take(self._pad))
            return self._finish()
        return None

    # -- B: we accepted -----------------------------------------------------------------
    def _step_responder(self) -> Sentinel | Established | None:
        st = self._state
        if st is _State.WAIT_KEY:
            if not self._read_key():
                return NEED_DATA
            self._out += self._public_key() + self._padding()
            self._sync = _sha1(b"req1", self._secret)
            self._state = _State.SYNC
        elif st is _State.SYNC:
            if not self._find_sync("HASH('req1', S)"):
                return NEED_DATA
            self._state = _State.SKEY
        elif st is _State.SKEY:
            if not self._need(_HASH_LEN, "the torrent's obfuscated hash"):
                return NEED_DATA
            assert self._lookup is not None
            skey = self._lookup(_xor(self._take(_HASH_LEN), _sha1(b"req3", self._secret)))
            if skey is None:
                raise EncryptionError("encrypted handshake for a torrent we do not have")
            self.skey = skey
            self._enc, self._dec = self._keys(skey)
            self._state = _State.PROVIDE
        elif st is _State.PROVIDE:
            if not self._need(14, "VC and crypto_provide"):
                return NEED_DATA
            assert self._dec is not None
            field = self._dec.update(self._take(14))
            if field[:8] != VC:
                raise EncryptionError("wrong verification constant (keys do not match)")
            self._provide = int.from_bytes(field[8:12], "big")
            self._pad = int.from_bytes(field[12:], "big")
            if self._pad > MAX_PAD:
                raise EncryptionError(f"PadC of {self._pad} bytes (at most {MAX_PAD})")
            self._state = _State.PAD_C
        elif st is _State.PAD_C:
            if not self._need(self._pad + 2, "PadC and len(IA)"):
                return NEED_DATA
            assert self._dec is not None
            self._ia_len = int.from_bytes(self._dec.update(self._take(self._pad + 2))[-2:], "big")
            self._state = _State.IA
        elif st is _State.IA:
            if not self._need(self._ia_len, "the initial payload"):
                return NEED_DATA
            assert self._dec is not None and self._enc is not None
            self._ia = self._dec.update(self._take(self._ia_len)) if self._ia_len else b""
            common = self._provide & self.crypto
            if not common & (CRYPTO_RC4 | CRYPTO_PLAINTEXT):
                raise EncryptionError(f"peer offered {_describe(self._provide)}, we accept "
                                      f"{_describe(self.crypto)}")
            rc4 = bool(common & CRYPTO_RC4) and (self.prefer_rc4
                                                   or not common & CRYPTO_PLAINTEXT)
            self._select = CRYPTO_RC4 if rc4 else CRYPTO_PLAINTEXT
            self._out += self._enc.update(VC + self._select.to_bytes(4, "big") + b"\0\0")
            return self._finish()
        return None
