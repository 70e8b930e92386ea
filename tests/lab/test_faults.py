"""Fault specs, when a fault fires (pure: reports in, decision out, no clock), who it kills,
and counting the pieces a swarm holds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from swarmhub.lab.faults import (
    Fault,
    SwarmProgress,
    Trigger,
    parse_fault,
    should_fire,
    swarm_pieces,
)
from swarmhub.lab.modes import ltpeer_script, runner_for
from swarmhub.lab.runner import report_line
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion
from swarmhub.wire.messages import bitfield_from_bools


def test_fault_specs() -> None:
    assert parse_fault("kill-hub@50%") == Fault("kill-hub", 0.5)
    assert parse_fault(" Kill-Peers=25%@30% ") == Fault("kill-peers", 0.3, 0.25)
    assert parse_fault("kill-hub@full-copy") == Fault("kill-hub", trigger=Trigger.FULL_COPY)
    assert parse_fault("kill-peers=25%@full-copy") == Fault(
        "kill-peers", 0.0, 0.25, Trigger.FULL_COPY
    )
    for text in (
        "kill-peers=25%@30%",
        "kill-hub@12.5%",
        "kill-hub@full-copy",
        "kill-peers=50%@full-copy",
    ):
        assert str(parse_fault(text)) == text
    for bad in (
        "kill-hub",
        "kill-hub@50",
        "kill-hub@100%",
        "kill-hub@full",
        "kill-hub@full-copy%",
        "kill-peers=0%@30%",
        "kill-peers=100%@30%",
        "reboot@50%",
        "",
    ):
        with pytest.raises(ValueError, match=r"kill-hub@full-copy|%"):
            parse_fault(bad)


def _bits(drawing: str) -> bytes:
    """``"1101 0000 1"`` -> the wire bitfield of those pieces (spaces are for the eye)."""
    flags = drawing.replace(" ", "")
    flags += "0" * (-len(flags) % 8)
    return int(flags, 2).to_bytes(len(flags) // 8, "big")


def _swarm(size: int, pieces: int | None, **drawings: str) -> SwarmProgress:
    """Receivers h1, h2 ... with the pieces drawn for each (each piece ``size/pieces``)."""
    state = SwarmProgress(size, pieces)
    for name, drawing in drawings.items():
        host = int(name[1:])
        state.add_host(host)
        flags = drawing.replace(" ", "")
        piece = size // len(flags)
        state.report(host, have_bytes=flags.count("1") * piece, bitfield=_bits(drawing))
    return state


FULL_COPY = parse_fault("kill-hub@full-copy")


def test_full_copy_fires_when_the_union_holds_every_piece_not_before() -> None:
    # The flake of issue 8: 255 of 256 pieces at 70 % mean progress. By state: not yet.
    almost = _swarm(256, 8, h1="1111 1110", h2="1111 1100", h3="0111 1110")
    assert almost.pieces_held() == 7 and not should_fire(FULL_COPY, almost)
    assert almost.delivered() > 0.7  # where the old percentage trigger fired
    almost.report(3, bitfield=_bits("0000 0001"))  # h3 gets the last piece
    assert almost.pieces_held() == 8 and should_fire(FULL_COPY, almost)


def test_no_full_copy_while_a_receiver_has_not_joined() -> None:
    # A hybrid client still fetching the torrent from the hub (slow start on a loaded
    # machine) would fail if the hub died now, whatever the others hold.
    state = _swarm(40, 4, h1="1100", h2="0011")
    state.add_host(3)
    assert state.pieces_held() == 4 and not state.full_copy()
    state.report(3, bitfield=_bits("0000"))  # it has the metadata: it can use the swarm
    assert state.full_copy()


def test_a_stall_is_called_only_while_pieces_are_missing() -> None:
    # Late joiners on a loaded machine may make no progress for a while; with every piece
    # in the live receivers' hands that is slowness, not a swarm that cannot finish.
    state = _swarm(40, 4, h1="1100", h2="0010")
    assert not state.can_finish()
    state.report(2, bitfield=_bits("0001"))
    assert state.can_finish()
    state.remove(1)  # the pieces only host 1 held go with it
    assert not state.can_finish()
    assert not SwarmProgress(40).can_finish()  # no piece count: the stall rule applies


def test_full_copy_ignores_spare_bits_and_older_lines() -> None:
    state = _swarm(90, 9, h1="1111 1111 0", h2="0000 0000 0")
    state.report(2, bitfield=b"\x00\x7f")  # garbage in the 7 spare bits: not piece 8
    assert state.pieces_held() == 8 and not state.full_copy()
    state.report(2, bitfield=_bits("0000 0000 1"), have_bytes=10)
    assert state.full_copy()
    state.report(2, bitfield=_bits("0000 0000 0"), have_bytes=0)  # a late, older line
    assert state.full_copy() and state.have_bytes[2] == 10


def test_killed_receivers_no_longer_count() -> None:
    state = _swarm(40, 4, h1="1100", h2="0011", h3="0000")
    assert state.full_copy()
    state.remove(2)
    assert state.pieces_held() == 2 and not state.full_copy()
    assert state.delivered() == pytest.approx(20 / 80)  # h1 and h3 need 80 bytes, hold 20


def test_without_bitfields_only_a_whole_file_is_a_full_copy() -> None:
    # client-server over HTTP: no pieces, bytes only (a part file's size).
    state = SwarmProgress(100)
    for host in (1, 2):
        state.add_host(host)
    state.report(1, have_bytes=60)
    state.report(2, have_bytes=60)
    assert state.pieces_held() is None and not state.full_copy()
    state.report(2, complete=True)
    assert state.full_copy() and state.delivered() == pytest.approx(160 / 200)


def test_percent_triggers_mean_bytes_delivered() -> None:
    fault = parse_fault("kill-peers=25%@50%")
    # 4 equal pieces of 25 bytes: 2 + 1 + 0 pieces = 75 of the 300 bytes the receivers need.
    state = _swarm(100, 4, h1="1100", h2="0100", h3="0000")
    assert state.delivered() == pytest.approx(0.25) and not should_fire(fault, state)
    state.report(3, have_bytes=75)
    assert state.delivered() == pytest.approx(0.5) and should_fire(fault, state)
    assert should_fire(parse_fault("kill-hub@0%"), SwarmProgress(100))


def test_status_lines_as_the_clients_print_them_feed_the_trigger() -> None:
    state = SwarmProgress(100, 10)
    have = bytearray(10)
    have[:9] = b"\x01" * 9
    # `swarmhub get --json` (cli.py) and ltpeer.py: verified bytes + hex wire bitfield.
    line = {"progress": 0.9, "have_bytes": 90, "bitfield": bitfield_from_bools(have).hex()}
    report_line(state, 1, line, 100)
    assert state.pieces_held() == 9 and state.delivered() == pytest.approx(0.9)
    report_line(state, 2, {"progress": 0.1, "bitfield": "0040"}, 100)  # piece 9 only
    assert state.full_copy() and state.have_bytes[2] == 10  # bytes from progress
    report_line(state, 3, {"progress": 0.5, "bitfield": "zz"}, 100)  # unreadable: bytes only
    assert state.have_bytes[3] == 50 and 3 not in state.bitfields


def test_kill_peers_picks_a_reproducible_fraction_and_never_everyone() -> None:
    fault = parse_fault("kill-peers=25%@30%")
    hosts = list(range(1, 9))
    victims = fault.victims(hosts)
    assert len(victims) == 2 and set(victims) <= set(hosts)
    assert fault.victims(list(reversed(hosts))) == victims  # same hosts, same victims
    assert len(fault.victims([1, 2, 3])) == 1  # at least one
    assert parse_fault("kill-peers=99%@10%").victims([1, 2, 3]) == sorted(
        parse_fault("kill-peers=99%@10%").victims([3, 2, 1])
    )
    assert len(parse_fault("kill-peers=99%@10%").victims([1, 2, 3])) == 2  # one survives
    assert parse_fault("kill-hub@50%").victims(hosts) == []


def test_swarm_pieces_counts_verified_pieces_across_folders(tmp_path: Path) -> None:
    piece = 16 * 1024
    data = random.Random(3).randbytes(8 * piece)
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=piece)
    a, b, c = (tmp_path / n for n in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    # a: pieces 0-2 right, then zeros (sparse, unwritten); b: pieces 5-6 right, 7 corrupt.
    (a / "payload.bin").write_bytes(data[: 3 * piece] + bytes(5 * piece))
    corrupt = bytearray(data)
    corrupt[7 * piece] ^= 1
    (b / "payload.bin").write_bytes(bytes(5 * piece) + bytes(corrupt[5 * piece :]))
    assert swarm_pieces(meta, [a, b, c]) == (5, 8)  # c holds nothing at all (no file)
    (c / "payload.bin").write_bytes(data)
    assert swarm_pieces(meta, [a, b, c]) == (8, 8)


def test_the_reference_swarm_runs_from_a_source_checkout() -> None:
    assert ltpeer_script().name == "ltpeer.py"
    assert runner_for("p2p", "libtorrent").__name__ == "LtP2P"
