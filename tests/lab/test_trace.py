"""The lab's opt-in trace of client status lines (``SWARMHUB_LAB_TRACE``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmhub.lab.runner import TRACE_ENV, _Trace
from swarmhub.settings import Settings


def test_the_trace_writes_each_status_line_with_its_time_since_the_gate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACE_ENV, "1")
    Settings.from_env()  # a client started with it set must not refuse it
    trace = _Trace(tmp_path / "trace.jsonl", 100.0)
    trace.line(101.25, 3, {"progress": 0.5, "webseed": 1024, "bitfield": "ff"})
    trace.close()
    rows = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert rows == [{"t": 1.25, "host": 3, "progress": 0.5, "webseed": 1024}]


def test_without_the_variable_nothing_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    trace = _Trace(tmp_path / "trace.jsonl", 0.0)
    trace.line(1.0, 1, {"progress": 0.1})
    trace.close()
    assert not (tmp_path / "trace.jsonl").exists()
