"""What a GET or HEAD for a stored file should answer: conditionals and byte ranges (sans-IO).

:func:`evaluate` takes the method, the request headers and the file's validators (ETag,
Last-Modified, size) and returns a :class:`Decision`; the aiohttp handler in
:mod:`swarmhub.hub.origin` only maps the decision to a response. Nothing here touches a
socket, the clock or the file, so every rule is a plain unit test.

Order of evaluation (RFC 9110 §13.2.2):

1. ``If-Match`` (strong comparison), else ``If-Unmodified-Since`` -> 412 when false.
2. ``If-None-Match`` (weak comparison) -> 304 for GET/HEAD, 412 otherwise, when it matches;
   else ``If-Modified-Since`` (GET/HEAD only, ignored next to ``If-None-Match``) -> 304.
3. ``Range`` (GET only, §14.2), unless ``If-Range`` (§13.1.5) does not match -> 200.

Ranges are clamped to the end of the file, overlapping or adjacent ones are coalesced,
and a set that selects no byte is 416 (§15.5.17). A Range header that does not parse is
ignored (§14.2: the full representation is sent). Range sets that look like a
denial-of-service attempt (RFC 9110 §14.2 and §17.15; Apache CVE-2011-3192: hundreds of
overlapping ranges multiply the bytes sent) are answered with the full file instead.

Header access: ``headers`` may be a case-insensitive mapping (``multidict.CIMultiDict``,
aiohttp's ``request.headers``) or a plain ``dict`` keyed by canonical names
(``"If-None-Match"``) or lower-case names (``"if-none-match"``). When the mapping has
``getall`` (a multidict), repeated ``If-Match``/``If-None-Match`` lines are combined as
RFC 9110 §5.3 says.
"""

from __future__ import annotations

import calendar
import email.utils
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from swarmhub.errors import SwarmhubError

__all__ = [
    "MAX_OVERLAPS",
    "MAX_RANGES",
    "MAX_UNSORTED_RANGES",
    "Decision",
    "DecisionKind",
    "content_etag",
    "content_range",
    "evaluate",
    "format_http_date",
    "multipart_layout",
    "parse_http_date",
    "parse_range",
    "unsatisfied_range",
]

#: More range-specs than this in one header and the full file is sent (DoS guard).
MAX_RANGES = 100
#: More range-specs than this that overlap an earlier one and the full file is sent
#: (RFC 9110 §14.2: "more than two overlapping ranges" is a sign of abuse).
MAX_OVERLAPS = 2
#: More range-specs than this not in ascending order and the full file is sent
#: (RFC 9110 §14.2: "many small ranges that are not listed in ascending order").
MAX_UNSORTED_RANGES = 16
#: Longer Range values are not parsed at all (aiohttp caps a header line at 8190 bytes).
_MAX_RANGE_HEADER = 8192

_SAFE_METHODS = frozenset({"GET", "HEAD"})


class DecisionKind(Enum):
    """What to answer; each maps to one status code (see :attr:`Decision.status`)."""

    FULL = 200
    PARTIAL = 206
    MULTIPART = 207  # 206 with a multipart/byteranges body; 207 only keeps values unique
    NOT_MODIFIED = 304
    PRECONDITION_FAILED = 412
    RANGE_NOT_SATISFIABLE = 416


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request.

    ``ranges`` are ``(start, end)`` pairs, start inclusive and end exclusive, in the order
    the parts are sent; they are set for PARTIAL (one) and MULTIPART (several), and for
    FULL they are ``((0, size),)`` unless the file is empty. ``size`` is the file's length.
    """

    kind: DecisionKind
    ranges: tuple[tuple[int, int], ...]
    size: int

    @property
    def status(self) -> int:
        """HTTP status code of the response."""
        return 206 if self.kind is DecisionKind.MULTIPART else self.kind.value

    @property
    def has_body(self) -> bool:
        """Whether a GET answer carries file bytes (HEAD never sends them)."""
        return (
            self.kind in (DecisionKind.FULL, DecisionKind.PARTIAL, DecisionKind.MULTIPART)
            and self.size > 0
        )

    @property
    def body_bytes(self) -> int:
        """File bytes in the body (multipart framing not counted)."""
        return sum(end - start for start, end in self.ranges)

    def content_ranges(self) -> tuple[str, ...]:
        """``Content-Range`` values: one per part for 206, ``bytes */size`` for 416."""
        if self.kind is DecisionKind.RANGE_NOT_SATISFIABLE:
            return (unsatisfied_range(self.size),)
        if self.kind in (DecisionKind.PARTIAL, DecisionKind.MULTIPART):
            return tuple(content_range(s, e, self.size) for s, e in self.ranges)
        return ()


def content_range(start: int, end: int, size: int) -> str:
    """``Content-Range`` of a 206 part (RFC 9110 §14.4); ``end`` is exclusive."""
    return f"bytes {start}-{end - 1}/{size}"


def unsatisfied_range(size: int) -> str:
    """``Content-Range`` of a 416 answer (RFC 9110 §14.4, §15.5.17)."""
    return f"bytes */{size}"


_HEX = re.compile(r"[0-9a-f]{32,}")


def content_etag(sha256_hex: str) -> str:
    """Strong ETag from the file's SHA-256: equal bytes, equal tag, on any hub or restart."""
    digest = sha256_hex.lower()
    if not _HEX.fullmatch(digest):
        raise SwarmhubError(f"expected a hex SHA-256 digest, got {sha256_hex!r}")
    return f'"sha256-{digest[:32]}"'


# --- HTTP dates (RFC 9110 §5.6.7) -------------------------------------------------------

_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4}) (\d\d):(\d\d):(\d\d) GMT"
)
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate of a unix time, whole seconds (the precision of ``Last-Modified``)."""
    return email.utils.formatdate(math.floor(timestamp), usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Unix time of an HTTP-date, or None when it is not one (then the header is ignored).

    IMF-fixdate is parsed exactly; the obsolete RFC 850 and asctime forms, which
    recipients must still accept, go through :func:`email.utils.parsedate_tz`.
    """
    value = value.strip()
    m = _IMF_FIXDATE.fullmatch(value)
    if m is not None:
        day, mon, year, hh, mm, ss = m.groups()
        try:
            return calendar.timegm(
                (int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss), 0, 0, 0)
            )
        except (ValueError, OverflowError):
            return None
    if len(value) > 64 or not value[:3].isalpha():
        return None
    parsed = email.utils.parsedate_tz(value)
    if parsed is None or parsed[9] not in (0, None):
        return None
    try:
        return calendar.timegm(parsed[:9])
    except (ValueError, OverflowError):
        return None


# --- entity tags (RFC 9110 §8.8.3) ------------------------------------------------------

_ETAG = re.compile(r'\s*(W/)?"([^"\x00-\x20\x7f]*)"\s*(?:,|$)')
_ONE_ETAG = re.compile(r'(W/)?"([^"\x00-\x20\x7f]*)"')


def _split_etag(tag: str) -> tuple[bool, str] | None:
    """``(weak, opaque)`` of one entity-tag, or None when it is not one."""
    m = _ONE_ETAG.fullmatch(tag.strip())
    return None if m is None else (m.group(1) is not None, m.group(2))


def _parse_etag_list(value: str) -> list[tuple[bool, str]] | None:
    """Tags of an If-Match/If-None-Match value; None for ``*``; invalid members skipped."""
    if value.strip() == "*":
        return None
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(value):
        m = _ETAG.match(value, pos)
        if m is None:  # skip a malformed member up to the next comma
            comma = value.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def _etag_matches(value: str, etag: tuple[bool, str] | None, *, weak: bool) -> bool:
    """Whether a list header matches our tag (§8.8.3.2: strong needs both sides strong)."""
    tags = _parse_etag_list(value)
    if tags is None:
        return True  # "*" matches any current representation, and ours exists
    if etag is None:
        return False
    our_weak, opaque = etag
    if weak:
        return any(o == opaque for _, o in tags)
    return not our_weak and any(not w and o == opaque for w, o in tags)


# --- byte ranges (RFC 9110 §14.1) -------------------------------------------------------

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
#: Positions with more digits than this are past the end of any file: they are read as
#: ``_HUGE`` (int() of a few thousand digits is slow, and refused past 4,300 digits).
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS


def _position(digits: str) -> int:
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def parse_range(value: str) -> list[tuple[int | None, int | None]] | None:
    """Specs of a ``bytes=`` Range value, or None when it is not a valid byte-range set.

    Each spec is ``(first, last)`` with ``last`` inclusive or None (open end), or
    ``(None, n)`` for a suffix of ``n`` bytes. Empty list members are skipped (§5.6.1).
    """
    if len(value) > _MAX_RANGE_HEADER:
        return None
    unit, sep, rest = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None  # another range unit: ignored (§14.2)
    specs: list[tuple[int | None, int | None]] = []
    for member in rest.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        m = _INT_RANGE.fullmatch(member)
        if m is not None:
            first = _position(m.group(1))
            last = _position(m.group(2)) if m.group(2) else None
            if last is not None and last < first:
                return None  # §14.1.1: an int-range with last < first is invalid
            specs.append((first, last))
            continue
        m = _SUFFIX_RANGE.fullmatch(member)
        if m is None:
            return None
        specs.append((None, _position(m.group(1))))
    return specs or None


def _resolve_ranges(
    specs: list[tuple[int | None, int | None]], size: int
) -> tuple[tuple[int, int], ...] | None:
    """Satisfiable ranges, clamped and coalesced; None means "send the full file"."""
    if len(specs) > MAX_RANGES:
        return None
    spans: list[tuple[int, int]] = []
    for first, last in specs:
        if first is None:  # suffix-range: the last n bytes (§14.1.2)
            assert last is not None
            if last == 0 or size == 0:
                continue
            spans.append((max(0, size - last), size))
        elif first < size:  # int-range; a last-pos past the end is clamped (§14.1.2)
            end = size if last is None else min(last + 1, size)
            spans.append((first, end))
    if len(spans) <= 1:
        return tuple(spans)
    ordered = sorted(spans)
    unsorted = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[0])
    overlaps = 0
    merged = [ordered[0]]
    touching = False
    for start, end in ordered[1:]:
        last_start, last_end = merged[-1]
        if start < last_end:
            overlaps += 1
        if start <= last_end:  # overlapping or adjacent: one part (§14.6 allows it)
            touching = True
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    if overlaps > MAX_OVERLAPS or unsorted > MAX_UNSORTED_RANGES:
        return None
    # §14.6: parts SHOULD follow the request's order unless ranges were coalesced
    return tuple(merged) if touching else tuple(spans)


# --- the decision ---------------------------------------------------------------------


class _Headers:
    """Case-insensitive reads from a CIMultiDict or a dict keyed canonically or lower-case."""

    __slots__ = ("_h",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._h = headers

    def get(self, name: str) -> str | None:
        value = self._h.get(name)
        if value is None:
            value = self._h.get(name.lower())
        return value

    def get_list(self, name: str) -> str | None:
        """A list header with repeated field lines combined (RFC 9110 §5.3)."""
        getall = getattr(self._h, "getall", None)
        if getall is not None:
            values: list[str] = getall(name, [])
            return ", ".join(values) if values else None
        return self.get(name)


def evaluate(
    method: str,
    headers: Mapping[str, str],
    etag: str,
    last_modified: float,
    size: int,
    *,
    now: float | None = None,
) -> Decision:
    """Decide the answer to ``method`` on a file with these validators (module docstring).

    ``etag`` is the full entity-tag as sent in the ``ETag`` header (quotes included).
    ``now``, when given, lets an ``If-Range`` date count only when Last-Modified is at
    least a second in the past, i.e. a strong validator (§8.8.2.2); without it any exact
    match counts.
    """
    if size < 0:
        raise SwarmhubError(f"a file size cannot be negative, got {size}")
    h = _Headers(headers)
    method = method.upper()
    our_tag = _split_etag(etag)
    mtime = math.floor(last_modified)
    full = Decision(DecisionKind.FULL, ((0, size),) if size else (), size)

    # §13.2.2 step 1: If-Match (§13.1.1), else If-Unmodified-Since (§13.1.4)
    if_match = h.get_list("If-Match")
    if if_match is not None:
        if not _etag_matches(if_match, our_tag, weak=False):
            return Decision(DecisionKind.PRECONDITION_FAILED, (), size)
    else:
        ius = h.get("If-Unmodified-Since")
        since = parse_http_date(ius) if ius is not None else None
        if since is not None and mtime > since:
            return Decision(DecisionKind.PRECONDITION_FAILED, (), size)

    # step 2: If-None-Match (§13.1.2, weak comparison), else If-Modified-Since (§13.1.3)
    if_none_match = h.get_list("If-None-Match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, our_tag, weak=True):
            kind = (
                DecisionKind.NOT_MODIFIED
                if method in _SAFE_METHODS
                else DecisionKind.PRECONDITION_FAILED
            )
            return Decision(kind, (), size)
    elif method in _SAFE_METHODS:
        ims = h.get("If-Modified-Since")
        since = parse_http_date(ims) if ims is not None else None
        if since is not None and mtime <= since:
            return Decision(DecisionKind.NOT_MODIFIED, (), size)

    # step 3: Range, GET only (§14.2); If-Range (§13.1.5) guards it
    range_value = h.get("Range")
    if method != "GET" or range_value is None:
        return full
    if_range = h.get("If-Range")
    if if_range is not None and not _if_range_matches(if_range, our_tag, mtime, now):
        return full
    specs = parse_range(range_value)
    if specs is None:
        return full  # §14.2: an invalid ranges-specifier is ignored
    spans = _resolve_ranges(specs, size)
    if spans is None:
        return full
    if not spans:
        return Decision(DecisionKind.RANGE_NOT_SATISFIABLE, (), size)
    kind = DecisionKind.PARTIAL if len(spans) == 1 else DecisionKind.MULTIPART
    return Decision(kind, spans, size)


def _if_range_matches(
    value: str, our_tag: tuple[bool, str] | None, mtime: int, now: float | None
) -> bool:
    """§13.1.5: a strong ETag match, or a date equal to Last-Modified (strong only)."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        tag = _split_etag(value)
        return (
            tag is not None
            and our_tag is not None
            and not tag[0]
            and not our_tag[0]
            and tag[1] == our_tag[1]
        )
    date = parse_http_date(value)
    if date is None or date != mtime:
        return False
    # a Last-Modified within a second of now is weak (§8.8.2.2): the file may change again
    return now is None or mtime <= now - 1


def multipart_layout(
    ranges: tuple[tuple[int, int], ...], size: int, content_type: str, boundary: str
) -> tuple[list[tuple[bytes, int, int]], bytes]:
    """Framing of a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1).

    Returns ``[(part_header, start, end), …]`` and the closing delimiter; the body is each
    header followed by the file bytes ``[start, end)``, then the closing delimiter, so
    Content-Length is known before any byte is read.
    """
    parts: list[tuple[bytes, int, int]] = []
    for i, (start, end) in enumerate(ranges):
        lead = "" if i == 0 else "\r\n"
        head = (
            f"{lead}--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {content_range(start, end, size)}\r\n\r\n"
        )
        parts.append((head.encode("latin-1"), start, end))
    return parts, f"\r\n--{boundary}--\r\n".encode("latin-1")
