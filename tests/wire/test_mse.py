"""The MSE handshake: our initiator against our responder, whole and byte by byte, and
hostile input (any bytes make progress or raise EncryptionError, never anything else)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.errors import LocalProtocolError
from swarmhub.wire import NEED_DATA
from swarmhub.wire.mse import (
    CRYPTO_PLAINTEXT,
    CRYPTO_RC4,
    MAX_PAD,
    EncryptionError,
    Established,
    MSEHandshake,
    Rc4,
    is_plaintext_handshake,
    rc4,
    skey_lookup,
)

SKEY = b"\x11" * 20
OTHER = b"\x22" * 20
IA = b"\x13BitTorrent protocol" + bytes(8) + SKEY + b"A" * 20


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def run(a: MSEHandshake, b: MSEHandshake, *, chunk: int | None = None
        ) -> tuple[Established, Established]:
    """Shuttle bytes between the two sides (``chunk`` bytes at a time) until both finish."""
    done: dict[str, Established] = {}
    for _ in range(100_000):
        for src, dst, dst_name in ((a, b, "b"), (b, a, "a")):
            data = src.data_to_send()
            step = chunk or len(data) or 1
            for i in range(0, len(data), step):
                assert dst_name not in done, "bytes after the handshake went to the core"
                dst.receive_data(data[i:i + step])
        for name, side in (("a", a), ("b", b)):
            if name not in done:
                ev = side.next_event()
                if isinstance(ev, Established):
                    done[name] = ev
        if len(done) == 2 and not a.data_to_send() and not b.data_to_send():
            return done["a"], done["b"]
    raise AssertionError("handshake did not finish")


def pair(crypto_a: int = CRYPTO_RC4 | CRYPTO_PLAINTEXT, crypto_b: int = CRYPTO_RC4
         | CRYPTO_PLAINTEXT, ia: bytes = IA, seed: int = 1) -> tuple[MSEHandshake, MSEHandshake]:
    a = MSEHandshake.initiator(SKEY, crypto=crypto_a, initial_payload=ia,
                               random_bytes=seeded(seed))
    b = MSEHandshake.responder(skey_lookup([OTHER, SKEY]), crypto=crypto_b,
                               random_bytes=seeded(seed + 1000))
    return a, b


@pytest.mark.parametrize("chunk", [None, 1, 7, 97])
def test_initiator_and_responder_agree_on_rc4_and_carry_the_initial_payload(chunk: int | None
                                                                           ) -> None:
    a_done, b_done = run(*pair(), chunk=chunk)
    assert a_done.crypto == b_done.crypto == CRYPTO_RC4
    assert b_done.skey == a_done.skey == SKEY
    assert b_done.initial_payload == IA
    assert a_done.initial_payload == b""
    assert a_done.encrypt and b_done.decrypt and b_done.encrypt and a_done.decrypt
    msg = bytes(range(256)) * 40
    wire = a_done.encrypt.update(msg)
    assert wire != msg
    assert b_done.decrypt.update(wire) == msg
    assert a_done.decrypt.update(b_done.encrypt.update(b"reply")) == b"reply"


@pytest.mark.parametrize(("offer", "accept", "chosen"), [
    (CRYPTO_PLAINTEXT, CRYPTO_RC4 | CRYPTO_PLAINTEXT, CRYPTO_PLAINTEXT),
    (CRYPTO_RC4 | CRYPTO_PLAINTEXT, CRYPTO_PLAINTEXT, CRYPTO_PLAINTEXT),
    (CRYPTO_RC4, CRYPTO_RC4, CRYPTO_RC4),
    (CRYPTO_RC4 | CRYPTO_PLAINTEXT, CRYPTO_RC4, CRYPTO_RC4),
])
def test_the_responder_selects_rc4_when_both_allow_it_else_plaintext(
        offer: int, accept: int, chosen: int) -> None:
    a_done, b_done = run(*pair(offer, accept))
    assert a_done.crypto == b_done.crypto == chosen
    assert b_done.initial_payload == IA  # the IA is RC4 even when plaintext follows
    if chosen == CRYPTO_PLAINTEXT:
        assert a_done.encrypt is a_done.decrypt is b_done.encrypt is b_done.decrypt is None


@pytest.mark.parametrize(("offer", "chosen"), [
    (CRYPTO_RC4 | CRYPTO_PLAINTEXT, CRYPTO_PLAINTEXT),
    (CRYPTO_RC4, CRYPTO_RC4),  # RC4 is still taken when it is all the peer offers
])
def test_without_prefer_rc4_the_responder_selects_plaintext_when_offered(
        offer: int, chosen: int) -> None:
    a = MSEHandshake.initiator(SKEY, crypto=offer, initial_payload=IA, random_bytes=seeded(3))
    b = MSEHandshake.responder(skey_lookup([SKEY]), random_bytes=seeded(4), prefer_rc4=False)
    a_done, b_done = run(a, b)
    assert a_done.crypto == b_done.crypto == chosen
    assert b_done.initial_payload == IA


def test_no_common_method_fails_on_the_responder() -> None:
    a, b = pair(CRYPTO_PLAINTEXT, CRYPTO_RC4)
    with pytest.raises(EncryptionError, match="peer offered plaintext, we accept rc4"):
        run(a, b)
    with pytest.raises(EncryptionError):  # sticky
        b.next_event()


def test_payload_past_the_handshake_in_the_same_read_is_handed_over_decrypted() -> None:
    a, b = pair(ia=b"")
    b.receive_data(a.data_to_send())
    assert b.next_event() is NEED_DATA
    a.receive_data(b.data_to_send())
    assert a.next_event() is NEED_DATA  # step 3 sent, waiting for step 4
    step3 = a.data_to_send()
    b.receive_data(step3)
    b_done = b.next_event()
    assert isinstance(b_done, Established)
    assert b_done.encrypt is not None
    a.receive_data(b.data_to_send() + b_done.encrypt.update(b"hello"))
    a_done = a.next_event()
    assert isinstance(a_done, Established)
    assert a_done.initial_payload == b"hello"


def test_an_unknown_torrent_is_refused() -> None:
    a = MSEHandshake.initiator(b"\x33" * 20)
    b = MSEHandshake.responder(skey_lookup([SKEY]))
    with pytest.raises(EncryptionError, match="torrent we do not have"):
        run(a, b)


def test_garbage_instead_of_the_sync_hash_fails_after_the_bounded_window() -> None:
    a, b = pair()
    b.receive_data(a.data_to_send()[:96])
    assert b.next_event() is NEED_DATA
    b.receive_data(bytes(MAX_PAD + 19))
    assert b.next_event() is NEED_DATA
    b.receive_data(b"\0")
    with pytest.raises(EncryptionError, match="no HASH\\('req1', S\\) within 512 bytes"):
        b.next_event()


def test_an_initiator_fed_garbage_gives_up_after_the_bounded_window() -> None:
    a, _ = pair()
    a.receive_data(random.Random(5).randbytes(96 + MAX_PAD + 8))
    with pytest.raises(EncryptionError, match="no encrypted VC"):
        a.next_event()


def test_eof_during_the_handshake_is_an_encryption_error() -> None:
    a, _ = pair()
    a.receive_data(random.Random(6).randbytes(50))
    assert a.next_event() is NEED_DATA
    a.receive_data(b"")
    with pytest.raises(EncryptionError, match="closed the connection"):
        a.next_event()


def test_a_degenerate_public_key_is_refused() -> None:
    _, b = pair()
    b.receive_data((1).to_bytes(96, "big"))
    with pytest.raises(EncryptionError, match="degenerate"):
        b.next_event()


def test_api_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        MSEHandshake.initiator(b"short")
    with pytest.raises(LocalProtocolError):
        MSEHandshake.initiator(SKEY, crypto=0)
    a, b = pair()
    run(a, b)
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"more")


def test_rc4_discards_the_first_kilobyte() -> None:
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
    from cryptography.hazmat.primitives.ciphers import Cipher

    full = Cipher(ARC4(b"k" * 20), mode=None).encryptor().update(bytes(1024 + 16))
    assert rc4(b"k" * 20).update(bytes(16)) == full[1024:]


def test_the_python_keystream_is_rc4_and_carries_on_in_cryptographys() -> None:
    """Short inputs run in Python; :meth:`Rc4.fast` and a long input (an initiator's IA
    may be 64 KiB) carry the same keystream on in cryptography's ARC4."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
    from cryptography.hazmat.primitives.ciphers import Cipher

    key = bytes(range(20))
    full = Cipher(ARC4(key), mode=None).encryptor().update(bytes(1024 + 30_000))[1024:]
    data = random.Random(2).randbytes(30_000)
    want = bytes(x ^ y for x, y in zip(data, full, strict=True))
    one = Rc4(key)
    assert one._ctx is None  # Python's
    assert one.update(data[:100]) + one.update(b"") + one.update(data[100:300]) == want[:300]
    assert one.fast().update(data[300:1000]) == want[300:1000]
    assert one.update(data[1000:1100]) == want[1000:1100]  # through cryptography's now
    two = Rc4(key)
    assert two.update(data[:50]) + two.update(data[50:20_000]) == want[:20_000]  # long
    assert two.update(data[20_000:20_010]) == want[20_000:20_010]


def test_after_a_few_keystreams_in_python_every_later_one_is_cryptographys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A swarm's peer makes two keystreams per encrypted connection: only the first few
    are worth ~0.5 ms of Python each instead of cryptography's one-off import."""
    from swarmhub.wire import mse

    monkeypatch.setattr(mse, "_PY_KEYSTREAMS", [2])
    key = bytes(range(20))
    made = [rc4(key) for _ in range(4)]
    assert [k._ctx is None for k in made] == [True, True, False, False]
    data = random.Random(3).randbytes(500)
    assert len({k.update(data) for k in made}) == 1  # one keystream, either way


def test_a_handshake_that_selects_plaintext_never_loads_cryptography() -> None:
    """The default (``prefer_rc4`` off): both sides' RC4 for the handshake runs in Python
    (importing cryptography's ARC4 cost 6-12 ms of every hybrid get that dialled the hub's
    peer); an RC4 payload stream still gets cryptography's."""
    import subprocess
    import sys
    from pathlib import Path

    code = """if True:
        import sys
        from test_mse import pair, run
        from swarmhub.wire.mse import CRYPTO_PLAINTEXT, CRYPTO_RC4
        a_done, b_done = run(*pair(crypto_b=CRYPTO_PLAINTEXT))
        assert a_done.crypto == b_done.crypto == CRYPTO_PLAINTEXT, a_done
        assert not [m for m in sys.modules if m.startswith("cryptography")]
        a_done, b_done = run(*pair(crypto_b=CRYPTO_RC4))
        assert a_done.encrypt is not None and "cryptography" in sys.modules
        assert b_done.decrypt.update(a_done.encrypt.update(b"payload")) == b"payload"
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-2000:]


def test_plaintext_detection_needs_at_most_twenty_bytes() -> None:
    assert is_plaintext_handshake(b"") is None
    assert is_plaintext_handshake(b"\x13Bit") is None
    assert is_plaintext_handshake(b"\x13BitTorrent protocol" + bytes(8)) is True
    assert is_plaintext_handshake(b"\x13Bix") is False
    assert is_plaintext_handshake(b"\x00") is False


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), bytewise=st.booleans(),
       role=st.sampled_from(["initiator", "responder"]))
def test_any_bytes_make_progress_or_raise_encryption_error(data: bytes, bytewise: bool,
                                                           role: str) -> None:
    hs = (MSEHandshake.initiator(SKEY) if role == "initiator"
          else MSEHandshake.responder(skey_lookup([SKEY])))
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    try:
        for c in [*chunks, b""]:
            hs.receive_data(c)
            ev = hs.next_event()
            assert ev is NEED_DATA  # random bytes never complete a handshake
            hs.data_to_send()
    except EncryptionError:
        return
    raise AssertionError("EOF must end an unfinished handshake with EncryptionError")


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), chunk=st.integers(1, 300),
       ia=st.binary(max_size=300))
def test_any_padding_and_chunking_completes(seed: int, chunk: int, ia: bytes) -> None:
    a_done, b_done = run(*pair(ia=ia, seed=seed), chunk=chunk)
    assert b_done.initial_payload == ia
    assert a_done.crypto == CRYPTO_RC4
