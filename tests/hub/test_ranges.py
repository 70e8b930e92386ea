"""The pure origin rules: conditionals (RFC 9110 §13) and byte ranges (§14), one test per rule."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from swarmhub.errors import SwarmhubError
from swarmhub.hub.ranges import (
    MAX_RANGES,
    Decision,
    DecisionKind,
    content_etag,
    content_range,
    evaluate,
    format_http_date,
    multipart_layout,
    parse_http_date,
    parse_range,
    unsatisfied_range,
)

ETAG = '"sha256-0123456789abcdef0123456789abcdef"'
OTHER = '"sha256-ffffffffffffffffffffffffffffffff"'
MTIME = 1_700_000_000.75  # Last-Modified is the whole second 1_700_000_000
LM = format_http_date(MTIME)
BEFORE = format_http_date(MTIME - 60)
AFTER = format_http_date(MTIME + 60)
SIZE = 10_000

FULL, PARTIAL, MULTI = DecisionKind.FULL, DecisionKind.PARTIAL, DecisionKind.MULTIPART
NOT_MOD, PRECOND, UNSAT = (
    DecisionKind.NOT_MODIFIED,
    DecisionKind.PRECONDITION_FAILED,
    DecisionKind.RANGE_NOT_SATISFIABLE,
)


def ev(headers: dict[str, str], method: str = "GET", size: int = SIZE, **kw: float) -> Decision:
    return evaluate(method, headers, ETAG, MTIME, size, **kw)


# --- conditionals: (headers, method, expected kind) -------------------------------------

CONDITIONALS = {
    "test_no_conditionals_serves_full": ({}, "GET", FULL),
    "test_if_match_same_etag_serves": ({"If-Match": ETAG}, "GET", FULL),
    "test_if_match_in_list_serves": ({"If-Match": f"{OTHER}, {ETAG}"}, "GET", FULL),
    "test_if_match_star_serves": ({"If-Match": "*"}, "GET", FULL),
    "test_if_match_other_etag_fails": ({"If-Match": OTHER}, "GET", PRECOND),
    "test_if_match_weak_etag_fails_strong_compare": ({"If-Match": "W/" + ETAG}, "GET", PRECOND),
    "test_if_match_garbage_fails": ({"If-Match": "nonsense"}, "GET", PRECOND),
    "test_if_unmodified_since_later_serves": ({"If-Unmodified-Since": AFTER}, "GET", FULL),
    "test_if_unmodified_since_equal_serves": ({"If-Unmodified-Since": LM}, "GET", FULL),
    "test_if_unmodified_since_earlier_fails": ({"If-Unmodified-Since": BEFORE}, "GET", PRECOND),
    "test_if_unmodified_since_invalid_date_ignored": (
        {"If-Unmodified-Since": "yesterday"},
        "GET",
        FULL,
    ),
    "test_if_unmodified_since_ignored_with_if_match": (
        {"If-Match": ETAG, "If-Unmodified-Since": BEFORE},
        "GET",
        FULL,
    ),
    "test_if_none_match_same_etag_not_modified": ({"If-None-Match": ETAG}, "GET", NOT_MOD),
    "test_if_none_match_weak_compare_not_modified": (
        {"If-None-Match": "W/" + ETAG},
        "GET",
        NOT_MOD,
    ),
    "test_if_none_match_star_not_modified": ({"If-None-Match": "*"}, "HEAD", NOT_MOD),
    "test_if_none_match_other_etag_serves": ({"If-None-Match": OTHER}, "GET", FULL),
    "test_if_none_match_on_unsafe_method_fails": ({"If-None-Match": ETAG}, "POST", PRECOND),
    "test_if_modified_since_equal_not_modified": ({"If-Modified-Since": LM}, "GET", NOT_MOD),
    "test_if_modified_since_later_not_modified": ({"If-Modified-Since": AFTER}, "HEAD", NOT_MOD),
    "test_if_modified_since_earlier_serves": ({"If-Modified-Since": BEFORE}, "GET", FULL),
    "test_if_modified_since_only_for_get_head": ({"If-Modified-Since": LM}, "POST", FULL),
    "test_if_modified_since_invalid_date_ignored": ({"If-Modified-Since": "0"}, "GET", FULL),
    "test_if_modified_since_ignored_with_if_none_match": (
        {"If-None-Match": OTHER, "If-Modified-Since": AFTER},
        "GET",
        FULL,
    ),
    "test_if_match_checked_before_if_none_match": (
        {"If-Match": OTHER, "If-None-Match": ETAG},
        "GET",
        PRECOND,
    ),
    "test_precondition_beats_range": ({"If-Match": OTHER, "Range": "bytes=0-1"}, "GET", PRECOND),
    "test_not_modified_beats_range": (
        {"If-None-Match": ETAG, "Range": "bytes=0-1"},
        "GET",
        NOT_MOD,
    ),
}


@pytest.mark.parametrize(
    ("headers", "method", "expected"), CONDITIONALS.values(), ids=CONDITIONALS.keys()
)
def test_conditional_rule(headers: dict[str, str], method: str, expected: DecisionKind) -> None:
    assert ev(headers, method).kind is expected


# --- ranges: (Range value, expected kind, expected ranges) ------------------------------

RANGES = {
    "test_range_first_last": ("bytes=0-99", PARTIAL, ((0, 100),)),
    "test_range_open_end": ("bytes=9000-", PARTIAL, ((9000, SIZE),)),
    "test_range_suffix": ("bytes=-500", PARTIAL, ((SIZE - 500, SIZE),)),
    "test_range_suffix_longer_than_file_is_whole_file": ("bytes=-99999", PARTIAL, ((0, SIZE),)),
    "test_range_end_clamped_to_eof": ("bytes=9990-20000", PARTIAL, ((9990, SIZE),)),
    "test_range_last_byte": ("bytes=9999-9999", PARTIAL, ((9999, SIZE),)),
    "test_range_unit_case_insensitive": ("Bytes=0-0", PARTIAL, ((0, 1),)),
    "test_range_whitespace_around_members": ("bytes= 0-1 ,\t4-5", MULTI, ((0, 2), (4, 6))),
    "test_range_empty_list_members_skipped": ("bytes=0-1,,", PARTIAL, ((0, 2),)),
    "test_range_several_give_multipart": ("bytes=0-9,100-109", MULTI, ((0, 10), (100, 110))),
    "test_range_multipart_keeps_request_order": (
        "bytes=100-109,0-9",
        MULTI,
        ((100, 110), (0, 10)),
    ),
    "test_range_overlapping_coalesced": ("bytes=0-99,50-149", PARTIAL, ((0, 150),)),
    "test_range_adjacent_coalesced": ("bytes=0-99,100-199", PARTIAL, ((0, 200),)),
    "test_range_coalesced_sorted": ("bytes=500-599,0-9,5-20", MULTI, ((0, 21), (500, 600))),
    "test_range_unsatisfiable_member_dropped": ("bytes=0-9,20000-", PARTIAL, ((0, 10),)),
    "test_range_start_at_eof_not_satisfiable": ("bytes=10000-", UNSAT, ()),
    "test_range_all_past_eof_not_satisfiable": ("bytes=20000-20010,30000-", UNSAT, ()),
    "test_range_suffix_zero_not_satisfiable": ("bytes=-0", UNSAT, ()),
    "test_range_huge_number_not_satisfiable": ("bytes=" + "9" * 40 + "-", UNSAT, ()),
    "test_range_invalid_last_before_first_ignored": ("bytes=10-5", FULL, ((0, SIZE),)),
    "test_range_invalid_syntax_ignored": ("bytes=abc", FULL, ((0, SIZE),)),
    "test_range_negative_first_ignored": ("bytes=--5", FULL, ((0, SIZE),)),
    "test_range_other_unit_ignored": ("items=0-5", FULL, ((0, SIZE),)),
    "test_range_missing_equals_ignored": ("bytes 0-5", FULL, ((0, SIZE),)),
    "test_range_empty_set_ignored": ("bytes=", FULL, ((0, SIZE),)),
    "test_range_one_bad_member_ignores_header": ("bytes=0-5,x", FULL, ((0, SIZE),)),
    "test_range_too_many_ranges_serves_full": (
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1)),
        FULL,
        ((0, SIZE),),
    ),
    "test_range_many_overlaps_serves_full": ("bytes=0-,0-,0-,0-", FULL, ((0, SIZE),)),
    "test_range_two_overlaps_allowed": ("bytes=0-10,5-20,15-30", PARTIAL, ((0, 31),)),
    "test_range_many_unsorted_serves_full": (
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(40, 0, -1)),
        FULL,
        ((0, SIZE),),
    ),
    "test_range_up_to_max_ranges_allowed": (
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES)),
        MULTI,
        tuple((i * 10, i * 10 + 2) for i in range(MAX_RANGES)),
    ),
}


@pytest.mark.parametrize(("value", "kind", "ranges"), RANGES.values(), ids=RANGES.keys())
def test_range_rule(value: str, kind: DecisionKind, ranges: tuple[tuple[int, int], ...]) -> None:
    d = ev({"Range": value})
    assert (d.kind, d.ranges) == (kind, ranges)


def test_range_ignored_for_head() -> None:
    assert ev({"Range": "bytes=0-9"}, "HEAD").kind is FULL


def test_range_ignored_for_other_methods() -> None:
    assert ev({"Range": "bytes=0-9"}, "POST").kind is FULL


def test_zero_size_file_serves_full_empty() -> None:
    d = ev({}, size=0)
    assert (d.kind, d.ranges, d.has_body, d.body_bytes) == (FULL, (), False, 0)


@pytest.mark.parametrize("value", ["bytes=0-", "bytes=-5", "bytes=0-0"])
def test_zero_size_file_any_range_not_satisfiable(value: str) -> None:
    d = ev({"Range": value}, size=0)
    assert d.kind is UNSAT
    assert d.content_ranges() == ("bytes */0",)


def test_zero_size_file_invalid_range_serves_full() -> None:
    assert ev({"Range": "bytes=x"}, size=0).kind is FULL


# --- If-Range (§13.1.5) ----------------------------------------------------------------


def test_if_range_etag_match_serves_partial() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": ETAG}).kind is PARTIAL


def test_if_range_etag_mismatch_serves_full() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": OTHER}).kind is FULL


def test_if_range_weak_etag_serves_full() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": "W/" + ETAG}).kind is FULL


def test_if_range_weak_own_etag_never_matches() -> None:
    d = evaluate("GET", {"Range": "bytes=0-9", "If-Range": ETAG}, "W/" + ETAG, MTIME, SIZE)
    assert d.kind is FULL


def test_if_range_date_exact_match_serves_partial() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": LM}).kind is PARTIAL


def test_if_range_date_later_serves_full() -> None:
    """Exact match only: a later date is not "unchanged since" for If-Range."""
    assert ev({"Range": "bytes=0-9", "If-Range": AFTER}).kind is FULL


def test_if_range_date_earlier_serves_full() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": BEFORE}).kind is FULL


def test_if_range_garbage_serves_full() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": "whenever"}).kind is FULL


def test_if_range_date_too_recent_is_weak_serves_full() -> None:
    assert ev({"Range": "bytes=0-9", "If-Range": LM}, now=MTIME + 0.1).kind is FULL
    assert ev({"Range": "bytes=0-9", "If-Range": LM}, now=MTIME + 5).kind is PARTIAL


def test_if_range_without_range_serves_full() -> None:
    assert ev({"If-Range": ETAG}).kind is FULL


def test_if_range_mismatch_does_not_hide_unsatisfiable_check() -> None:
    """A mismatching If-Range means the Range header is not looked at: 200, never 416."""
    assert ev({"Range": "bytes=99999-", "If-Range": OTHER}).kind is FULL


# --- header access ---------------------------------------------------------------------


def test_headers_cimultidict_case_insensitive() -> None:
    h: CIMultiDict[str] = CIMultiDict({"rAnGe": "bytes=0-9"})
    assert evaluate("GET", h, ETAG, MTIME, SIZE).kind is PARTIAL


def test_headers_plain_dict_lower_case_names() -> None:
    assert ev({"range": "bytes=0-9", "if-range": OTHER}).kind is FULL
    assert ev({"if-none-match": ETAG}).kind is NOT_MOD


def test_headers_repeated_if_none_match_lines_combined() -> None:
    h: CIMultiDict[str] = CIMultiDict([("If-None-Match", OTHER), ("If-None-Match", ETAG)])
    assert evaluate("GET", h, ETAG, MTIME, SIZE).kind is NOT_MOD


def test_method_case_insensitive() -> None:
    assert ev({"Range": "bytes=0-9"}, "get").kind is PARTIAL


def test_negative_size_refused() -> None:
    with pytest.raises(SwarmhubError):
        ev({}, size=-1)


# --- helpers ---------------------------------------------------------------------------


def test_content_range_values() -> None:
    assert content_range(0, 100, 1000) == "bytes 0-99/1000"
    assert unsatisfied_range(1000) == "bytes */1000"
    d = ev({"Range": "bytes=0-9,20-29"})
    assert d.content_ranges() == ("bytes 0-9/10000", "bytes 20-29/10000")
    assert d.status == 206 and d.body_bytes == 20
    assert ev({}).content_ranges() == ()
    assert ev({"Range": "bytes=-0"}).status == 416


def test_statuses() -> None:
    assert ev({}).status == 200
    assert ev({"Range": "bytes=0-0"}).status == 206
    assert ev({"If-None-Match": ETAG}).status == 304
    assert ev({"If-Match": OTHER}).status == 412


def test_content_etag_is_strong_and_truncated() -> None:
    digest = "AB" * 32
    assert content_etag(digest) == '"sha256-' + "ab" * 16 + '"'
    with pytest.raises(SwarmhubError):
        content_etag("not-hex")


def test_http_date_forms() -> None:
    want = 784111777
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == want
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == want  # RFC 850
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == want  # asctime
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 +0100") is None
    assert parse_http_date("1994-11-06") is None
    assert parse_http_date(format_http_date(want + 0.9)) == want


def test_multipart_layout_framing() -> None:
    parts, tail = multipart_layout(((0, 2), (5, 7)), 10, "text/plain", "B")
    assert parts[0] == (
        b"--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n",
        0,
        2,
    )
    assert parts[1][0].startswith(b"\r\n--B\r\n")
    assert b"Content-Range: bytes 5-6/10" in parts[1][0]
    assert tail == b"\r\n--B--\r\n"


def test_parse_range_specs() -> None:
    assert parse_range("bytes=0-1,5-,-3") == [(0, 1), (5, None), (None, 3)]
    assert parse_range("bytes=5-1") is None
    assert parse_range("bytes=" + "0-1," * 5000) is None  # longer than any header line


# --- properties ------------------------------------------------------------------------


@given(value=st.text(max_size=200), size=st.integers(min_value=0, max_value=10**6))
def test_any_range_string_never_raises(value: str, size: int) -> None:
    d = evaluate("GET", {"Range": value}, ETAG, MTIME, size)
    _check_within(d, size)


_spec = st.one_of(
    st.tuples(st.integers(0, 2000), st.none() | st.integers(0, 2000)).map(
        lambda t: f"{t[0]}-{'' if t[1] is None else t[1]}"
    ),
    st.integers(0, 3000).map(lambda n: f"-{n}"),
)


@given(specs=st.lists(_spec, min_size=1, max_size=20), size=st.integers(0, 1500))
def test_wellformed_ranges_within_file_and_disjoint(specs: list[str], size: int) -> None:
    d = evaluate("GET", {"Range": "bytes=" + ",".join(specs)}, ETAG, MTIME, size)
    _check_within(d, size)
    if d.kind in (PARTIAL, MULTI):
        ordered = sorted(d.ranges)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ordered))


def _check_within(d: Decision, size: int) -> None:
    assert d.size == size
    for start, end in d.ranges:
        assert 0 <= start < end <= size
    if d.kind is PARTIAL:
        assert len(d.ranges) == 1
    if d.kind is MULTI:
        assert len(d.ranges) >= 2
    if d.kind is FULL:
        assert d.ranges == (((0, size),) if size else ())
