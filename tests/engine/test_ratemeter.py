"""RateMeter: the sliding-window rate, and arrays only while the window holds samples."""

from __future__ import annotations

from swarmhub.engine.peerstate import RateMeter


def test_a_meter_that_never_sees_data_holds_no_arrays() -> None:
    meter = RateMeter()
    assert meter.rate(10.0) == 0.0
    assert meter._starts is None and meter._bytes is None


def test_the_rate_is_the_bytes_in_the_window() -> None:
    meter = RateMeter(window=5.0)
    meter.add(1000, 0.0)
    assert meter.rate(0.5) == 1000.0  # one bucket: per second, not per bucket
    meter.add(1000, 0.05)  # the same 0.1 s bucket
    meter.add(2000, 2.0)
    assert meter.rate(2.0) == 4000 / 2.0
    assert meter.rate(6.0) == 2000.0  # the first bucket left the window
    assert meter.total == 4000


def test_an_emptied_window_frees_the_arrays_and_the_meter_starts_over() -> None:
    meter = RateMeter(window=5.0)
    meter.add(500, 1.0)
    meter.add(500, 2.0)
    assert meter.rate(20.0) == 0.0
    assert meter._starts is None and meter._bytes is None
    meter.add(300, 21.0)
    assert meter.rate(21.5) == 300.0
    assert meter.total == 1300
