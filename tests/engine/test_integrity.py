"""Integrity: who gets struck and banned for pieces that fail their hash check."""

from __future__ import annotations

from swarmhub.engine.integrity import Integrity

A, B, C = "liar", "honest", "other"


def test_a_lone_sender_of_a_bad_piece_is_banned_at_once() -> None:
    books = Integrity(threshold=2)
    assert books.failed(0, {0: A, 16384: A}, None) == (A, "piece 0 failed its hash check")


def test_shared_failures_strike_each_and_the_unique_worst_is_banned() -> None:
    books = Integrity(threshold=2)
    assert books.failed(0, {0: A, 16384: B}, None) is None
    assert books.failed(1, {0: A, 16384: C}, None) == (
        A, "2 pieces it sent failed their hash check")
    assert books.ban(A) and not books.ban(A)
    assert books.strikes[B] == 0 and books.strikes[C] == 0  # forgiven


def test_a_tie_at_the_threshold_waits_and_digests_settle_it() -> None:
    books = Integrity(threshold=2)
    assert books.failed(0, {0: A, 16384: B}, {0: b"bad", 16384: b"good"}) is None
    assert books.failed(0, {0: A, 16384: B}, {0: b"bad2", 16384: b"good"}) is None
    assert books.wants_digests(0)
    assert books.passed(0, {0: b"right", 16384: b"good"}) == {A}
    assert not books.wants_digests(0)
    books.ban(A)
    assert books.strikes[B] == 0


def test_a_failure_with_a_banned_senders_blocks_strikes_nobody() -> None:
    books = Integrity(threshold=1)
    books.ban(A)
    assert books.failed(3, {0: A, 16384: B}, None) is None
    assert books.strikes[B] == 0
