"""Fault specs, who a fault kills, and counting the pieces a swarm holds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from swarmhub.lab.faults import Fault, parse_fault, swarm_pieces
from swarmhub.lab.modes import ltpeer_script, runner_for
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion


def test_fault_specs() -> None:
    assert parse_fault("kill-hub@50%") == Fault("kill-hub", 0.5)
    assert parse_fault(" Kill-Peers=25%@30% ") == Fault("kill-peers", 0.3, 0.25)
    assert str(parse_fault("kill-peers=25%@30%")) == "kill-peers=25%@30%"
    assert str(parse_fault("kill-hub@12.5%")) == "kill-hub@12.5%"
    for bad in (
        "kill-hub",
        "kill-hub@50",
        "kill-hub@100%",
        "kill-peers=0%@30%",
        "kill-peers=100%@30%",
        "reboot@50%",
        "",
    ):
        with pytest.raises(ValueError):
            parse_fault(bad)


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
