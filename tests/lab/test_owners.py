"""What a root lab writes into a user's tree (the report folder) gets that user's owner,
as its bytecode does (tests/lab/test_bytecode.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from swarmhub.lab.commands import register
from swarmhub.lab.owners import tree
from swarmhub.lab.report import give_report_to_home_owner, report_home

#: Not root's: who the checkout belongs to (nobody).
_OWNER = 65534

root_only = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root: the lab's case (root writes into a tree another user owns)")


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A folder :data:`_OWNER` owns, where that user can reach it (pytest's own folders
    are root's alone, 0700)."""
    home = Path(tempfile.mkdtemp(prefix="swarmhub-owners-"))
    try:
        os.chown(home, _OWNER, _OWNER)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _owners(top: Path) -> dict[str, tuple[int, int]]:
    return {p: (os.lstat(p).st_uid, os.lstat(p).st_gid) for p in tree(top)}


@root_only
def test_a_root_lab_report_in_a_users_checkout_is_the_users(checkout: Path) -> None:
    """``lab simulate --out`` as root, into a folder the run creates two levels deep:
    every folder and file is the checkout owner's (root kept them: they could not remove
    their own checkout)."""
    out = checkout / "reports" / "lab-report"
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["lab", "simulate", "--peers", "2", "--size", "1MiB",
                                      "--modes", "p2p", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    owners = _owners(checkout / "reports")
    assert len(owners) > 3 and set(owners.values()) == {(_OWNER, _OWNER)}, owners


@root_only
def test_into_an_existing_report_folder_only_what_the_lab_writes_changes_owner(
        checkout: Path) -> None:
    out = checkout / "lab-report"
    out.mkdir()
    os.chown(out, _OWNER, _OWNER)
    home = report_home(out)
    assert home == out
    (out / "notes.txt").write_text("root's, not the lab's")  # not the lab's: left as it is
    (out / "work" / "p2p-n2" / "h1").mkdir(parents=True)  # lab run --keep
    (out / "work" / "p2p-n2" / "h1" / "payload.bin").write_bytes(b"x")
    (out / "report.html").write_text("")
    (out / "completion.png").write_bytes(b"")
    assert give_report_to_home_owner(out, home) == 6
    owners = _owners(out)
    assert owners.pop(str(out / "notes.txt")) == (0, 0)
    assert set(owners.values()) == {(_OWNER, _OWNER)}, owners


def test_the_report_home_is_the_nearest_existing_folder(tmp_path: Path) -> None:
    assert report_home(tmp_path / "a" / "b") == tmp_path
    assert report_home(tmp_path) == tmp_path
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("")
    if os.geteuid() != 0:  # (without root: nothing to give, nothing changes)
        assert give_report_to_home_owner(tmp_path / "a" / "b", tmp_path) == 0
