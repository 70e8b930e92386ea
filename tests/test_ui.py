"""The CLI's error words and display helpers, without processes."""

from __future__ import annotations

import asyncio
import errno

from swarmhub.errors import StorageError
from swarmhub.progress import Sources, fmt_bytes, reachable_address
from swarmhub.ui import describe


def test_an_exception_group_is_described_by_its_real_cause() -> None:
    group = ExceptionGroup("unhandled errors in a TaskGroup", [
        ExceptionGroup("inner", [OSError(errno.EROFS, "Read-only file system", "/mnt/x")]),
    ])
    mixed = BaseExceptionGroup("g", [asyncio.CancelledError(), group])
    assert describe(mixed) == ("/mnt/x is on a read-only file system; choose another folder "
                               "(-o DIR)")


def test_swarmhub_errors_keep_their_words_on_one_line() -> None:
    assert describe(StorageError("cannot write\n  /x: disk full")) == \
        "cannot write /x: disk full"


def test_port_in_use_names_the_address_and_the_option() -> None:
    exc = OSError(errno.EADDRINUSE, "error while attempting to bind on address "
                  "('127.0.0.1', 6881): address already in use")
    text = describe(exc)
    assert "127.0.0.1:6881" in text and "--listen" in text


def test_an_unexpected_error_asks_for_a_report() -> None:
    assert "report the traceback" in describe(KeyError("x"))


def test_sizes_and_sources_read_naturally() -> None:
    assert fmt_bytes(999) == "999 B"
    assert fmt_bytes(1_500_000) == "1.5 MB"
    s = Sources(peers_bytes=2_000_000, webseed_bytes=500_000, max_peers=3)
    assert s.describe() == "2.0 MB from peers (up to 3 at once); 500.0 kB from the hub's web seed"
    assert Sources().describe() == "nothing to fetch"


def test_reachable_address_is_never_a_wildcard() -> None:
    assert reachable_address("127.0.0.1") == "127.0.0.1"
    assert reachable_address("0.0.0.0") not in ("0.0.0.0", "")
