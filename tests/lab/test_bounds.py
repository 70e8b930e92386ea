"""The distribution-time bounds against values computed by hand."""

from __future__ import annotations

import pytest

from swarmhub.lab.bounds import (
    cs_bound,
    format_size,
    p2p_bound,
    parse_duration,
    parse_rate,
    parse_size,
)

MIB = 1 << 20


def test_cs_equal_rates_source_limited() -> None:
    # F = 8 Mbit (1 MB), u_s = 10 Mbit/s, 4 clients at 100 Mbit/s: 4*8/10 = 3.2 s vs 0.08 s.
    assert cs_bound(10**6, 10e6, [100e6] * 4) == pytest.approx(3.2)


def test_cs_client_limited_when_downloads_are_slow() -> None:
    # 2 clients, u_s = 100 Mbit/s: 2*8/100 = 0.16 s; slowest client 1 Mbit/s: 8 s.
    assert cs_bound(10**6, 100e6, [50e6, 1e6]) == pytest.approx(8.0)


def test_p2p_equal_rates() -> None:
    # F = 64 MiB = 536870912 bits; u_s = u_i = 20 Mbit/s, d = 100 Mbit/s, N = 8.
    # F/u_s = 26.84 s; F/d = 5.37 s; N F/(u_s + 8 u) = 8*536870912/180e6 = 23.86 s.
    assert p2p_bound(64 * MIB, 20e6, [100e6] * 8, [20e6] * 8) == pytest.approx(536870912 / 20e6)
    # With a faster source the aggregate term wins: u_s = 100 Mbit/s -> 8F/(260e6) = 16.52 s.
    assert p2p_bound(64 * MIB, 100e6, [100e6] * 8, [20e6] * 8) == pytest.approx(
        8 * 536870912 / 260e6
    )


def test_p2p_unequal_rates() -> None:
    # F = 1 MB = 8e6 bits; u_s = 4 Mbit/s; clients up 1, 2, 3 Mbit/s; downs 10, 8, 16 Mbit/s.
    # F/u_s = 2 s; F/d_min = 1 s; 3*8/(4+6) = 2.4 s -> 2.4 s.
    assert p2p_bound(10**6, 4e6, [10e6, 8e6, 16e6], [1e6, 2e6, 3e6]) == pytest.approx(2.4)
    # Slow download dominates: d_min = 2 Mbit/s -> 4 s.
    assert p2p_bound(10**6, 4e6, [10e6, 2e6, 16e6], [1e6, 2e6, 3e6]) == pytest.approx(4.0)
    # Free-riders (u_i = 0) turn p2p into client-server for the aggregate term.
    assert p2p_bound(10**6, 4e6, [100e6] * 3, [0, 0, 0]) == pytest.approx(
        cs_bound(10**6, 4e6, [100e6] * 3)
    )


def test_p2p_never_above_cs() -> None:
    for n in (1, 2, 8, 64):
        assert p2p_bound(MIB, 5e6, [50e6] * n, [5e6] * n) <= cs_bound(MIB, 5e6, [50e6] * n)


@pytest.mark.parametrize(
    "call",
    [
        lambda: cs_bound(0, 1e6, [1e6]),
        lambda: cs_bound(1, 0, [1e6]),
        lambda: cs_bound(1, 1e6, []),
        lambda: p2p_bound(1, 1e6, [1e6], [1e6, 2e6]),
        lambda: p2p_bound(1, 1e6, [1e6], [-1]),
    ],
)
def test_bad_inputs_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_units() -> None:
    assert parse_size("64MiB") == 64 * MIB
    assert parse_size("4 MB") == 4_000_000
    assert parse_size("1.5KiB") == 1536
    assert parse_size("123") == 123
    assert parse_rate("20mbit") == 20_000_000
    assert parse_rate("8Mbit") == 8_000_000
    assert parse_rate("1mbps") == 8_000_000  # tc: mbps = megabytes per second
    assert parse_rate("500kbit") == 500_000
    assert parse_duration("10ms") == pytest.approx(0.01)
    assert parse_duration("2s") == pytest.approx(2.0)
    assert format_size(64 * MIB) == "64.0 MiB"
    for bad in ("", "ten", "5 parsecs", "-1MiB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_rate("20 MiB")
