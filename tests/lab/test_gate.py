"""The lab's start gate: a client says it is ready, then waits for the runner's file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conftest import until
from swarmhub.lab.gate import GATE_ENV, gate_path, wait_gate


def test_gate_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.delenv(GATE_ENV, raising=False)
    assert gate_path() is None
    monkeypatch.setenv(GATE_ENV, str(tmp_path / "go"))
    assert gate_path() == tmp_path / "go"


def test_a_client_says_so_then_waits_until_the_file_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = tmp_path / "go"

    polls = 0
    exists = Path.exists

    def counted(self: Path) -> bool:
        nonlocal polls
        polls += self == gate
        return exists(self)

    async def main() -> None:
        task = asyncio.create_task(wait_gate(gate, 60.0, ["json"]))
        out: list[str] = []

        def said() -> bool:
            out.append(capsys.readouterr().out)
            return bool("".join(out))

        await until(said, "the gate line")  # it comes at the task's first step
        assert [json.loads(ln) for ln in "".join(out).splitlines()] == [{"event": "gate"}]
        await until(lambda: polls >= 5, "several polls of the missing file")
        assert not task.done()  # still waiting
        gate.touch()
        await asyncio.wait_for(task, 60)

    monkeypatch.setattr(Path, "exists", counted)
    asyncio.run(main())


def test_an_open_gate_lets_the_client_through(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    gate.touch()
    asyncio.run(asyncio.wait_for(wait_gate(gate, 60.0), 60))


def test_a_gate_never_opened_lets_the_client_go_after_its_timeout(tmp_path: Path) -> None:
    # a client must not hang on a lab that died: the wait is bounded by the client's timeout
    asyncio.run(asyncio.wait_for(wait_gate(tmp_path / "never", 0.05), 60))
