"""Minimum distribution times (pure) and the units the lab speaks.

Why: every lab figure is reported as measured/bound, so the bound must be exact and its
units unambiguous. Sizes are **bytes**, rates are **bits per second**, times **seconds**.

For a file of F bytes sent from one source with upload u_s to N clients with download
rates d_i and upload rates u_i (Kurose & Ross, "Computer Networking", §2.5):

- client-server: ``D_cs = max(N·F/u_s, F/d_min)`` — the source sends N copies, and the
  slowest client must receive one.
- peer-to-peer: ``D_p2p = max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`` — the source sends at least
  one copy, the slowest client receives one, and N copies must leave some uplink.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "cs_bound",
    "format_rate",
    "format_size",
    "p2p_bound",
    "parse_duration",
    "parse_rate",
    "parse_size",
]


def _check(file_bytes: int, source_up_bps: float, downs: Sequence[float]) -> None:
    if file_bytes <= 0:
        raise ValueError(f"file size must be > 0 bytes, got {file_bytes}")
    if source_up_bps <= 0:
        raise ValueError(f"source upload must be > 0 bit/s, got {source_up_bps}")
    if not downs:
        raise ValueError("at least one client is needed")
    if min(downs) <= 0:
        raise ValueError("every client download rate must be > 0 bit/s")


def cs_bound(file_bytes: int, source_up_bps: float, client_down_bps: Sequence[float]) -> float:
    """Client-server minimum time in seconds: ``max(N·F/u_s, F/d_min)``."""
    _check(file_bytes, source_up_bps, client_down_bps)
    bits = 8.0 * file_bytes
    n = len(client_down_bps)
    return max(n * bits / source_up_bps, bits / min(client_down_bps))


def p2p_bound(
    file_bytes: int,
    source_up_bps: float,
    client_down_bps: Sequence[float],
    client_up_bps: Sequence[float],
) -> float:
    """Peer-to-peer minimum time in seconds: ``max(F/u_s, F/d_min, N·F/(u_s + Σu_i))``."""
    _check(file_bytes, source_up_bps, client_down_bps)
    if len(client_up_bps) != len(client_down_bps):
        raise ValueError("one upload and one download rate per client")
    if any(u < 0 for u in client_up_bps):
        raise ValueError("client upload rates must be >= 0 bit/s")
    bits = 8.0 * file_bytes
    n = len(client_down_bps)
    return max(
        bits / source_up_bps,
        bits / min(client_down_bps),
        n * bits / (source_up_bps + sum(client_up_bps)),
    )


# -- units -----------------------------------------------------------------------------------

_NUM = r"\s*([0-9]+(?:\.[0-9]+)?)\s*"
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
}
_RATE_UNITS = {
    "": 1,
    "bit": 1,
    "bps": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,  # tc's convention: bytes/s
    "kibit": 1 << 10,
    "mibit": 1 << 20,
}
_TIME_UNITS = {"": 1e-3, "ms": 1e-3, "s": 1.0, "us": 1e-6}


def _parse(text: str, units: dict[str, int] | dict[str, float], what: str) -> float:
    m = re.fullmatch(_NUM + r"([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in units:
        known = ", ".join(u for u in units if u)
        raise ValueError(f"cannot read {text!r} as a {what} (units: {known})")
    return float(m.group(1)) * units[m.group(2).lower()]


def parse_size(text: str) -> int:
    """``"64MiB"`` -> 67108864 bytes; ``"4MB"`` -> 4000000; a bare number is bytes."""
    return int(_parse(text, _SIZE_UNITS, "size"))


def parse_rate(text: str) -> int:
    """``"20mbit"`` -> 20000000 bit/s (tc's spelling: ``mbps`` means megabytes/s)."""
    return int(_parse(text, _RATE_UNITS, "rate"))


def parse_duration(text: str) -> float:
    """``"10ms"`` -> 0.010 s; a bare number is milliseconds."""
    return _parse(text, _TIME_UNITS, "duration")


def format_size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_rate(bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if abs(bps) >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bit/s"
