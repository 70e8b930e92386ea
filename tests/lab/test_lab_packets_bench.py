"""bench/lab_packets.py's packet classifier: what a bridge port's frame is (pure ACK, a
small segment and the BitTorrent messages it carries, or a big one)."""

from __future__ import annotations

import struct

from conftest import load_bench
from swarmhub.wire import messages as m

lp = load_bench("lab_packets")


def _frame(payload: bytes) -> bytes:
    """An Ethernet + IPv4 (20 bytes) + TCP (32 bytes: timestamps) frame, cut at 256 bytes
    as the sniffer's read is."""
    ip = bytes([0x45, 0]) + struct.pack(">H", 20 + 32 + len(payload)) + bytes(5) + b"\x06"
    ip += bytes(20 - len(ip))
    tcp = bytes(12) + bytes([8 << 4]) + bytes(19)
    return (bytes(12) + b"\x08\x00" + ip + tcp + payload)[:256]


def test_a_segment_without_payload_is_a_pure_ack() -> None:
    assert lp.classify(_frame(b""), outgoing=True) == ("to", "ack", None)


def test_a_small_segment_names_the_messages_it_carries() -> None:
    payload = m.encode(m.Have(3)) + m.encode(m.Request(1, 0, 16384)) + m.encode(m.Have(4))
    assert lp.classify(_frame(payload), outgoing=False) == ("from", "small", "4,6")


def test_a_block_is_a_big_segment_and_other_protocols_are_skipped() -> None:
    block = m.encode(m.Piece(0, 0, bytes(1400)))
    assert lp.classify(_frame(block), outgoing=False) == ("from", "big", None)
    arp = bytes(12) + b"\x08\x06" + bytes(40)
    assert lp.classify(arp, outgoing=False)[1] == ""
