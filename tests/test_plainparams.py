"""Plain command-line values without pydantic (swarmhub.plainparams): the same values and
the same errors as Typer's own pydantic checkers, and pydantic left unloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from swarmhub.plainparams import _NO_ANSWER, plain_value

#: Inputs a user may type, for each plain type (the odd ones go to pydantic).
_INPUTS: dict[Any, list[Any]] = {
    int: ["12", "+5", "-3", "-0", "007", "9" * 30, " 12 ", "1_000", "1.0", "0x10", "١٢", "",
          "abc", 7, True, 2.0],
    float: ["1", "1.5", ".5", "5.", "-2.5", "-0", "+1", "1" * 400, "1e3", "nan", "inf", " 1 ",
            "1_0", "x", "", 0.0, 3],
    str: ["", "a b", "-", "ü", b"bytes", 5],
    Path: ["", ".", "a/b", "~/x", Path("p"), PurePosixPath("p")],
    bool: [True, False, "true", "0"],
}


@pytest.mark.parametrize("annotation", list(_INPUTS), ids=lambda a: a.__name__)
def test_a_plain_answer_is_the_one_pydantic_gives(annotation: Any) -> None:
    """Where plain_value answers, pydantic's lax mode answers the same (value and type)."""
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(annotation)
    answered = 0
    for value in _INPUTS[annotation]:
        ours = plain_value(annotation, value)
        if ours is _NO_ANSWER:
            continue
        answered += 1
        try:
            theirs = adapter.validate_python(value)
        except ValidationError:
            pytest.fail(f"{annotation.__name__} {value!r}: we say {ours!r}, pydantic refuses")
        assert (type(ours), ours) == (type(theirs), theirs), value
    assert answered >= 2  # the common inputs are decided here, not handed on


#: Run in a fresh interpreter: parse a command line of ``get`` (and ``create``) as the CLI
#: does, print the values and whether pydantic was imported.
_PARSE = """
import json, sys
from swarmhub import plainparams
plainparams.install()
import typer
from swarmhub import cli
cmd = typer.main.get_command(cli.app)
out = {}
for name, args in json.loads(sys.argv[1]).items():
    try:
        ctx = cmd.commands[name].make_context(name, args)
        out[name] = {k: [type(v).__name__, v if isinstance(v, (int, float, str, list))
                         or v is None else str(v)] for k, v in ctx.params.items()}
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc.format_message()}"
out["pydantic"] = "pydantic" in sys.modules
print(json.dumps(out))
"""


def _parse(tmp_path: Path, **commands: list[str]) -> dict[str, Any]:
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"),
               SWARMHUB_CONFIG=str(tmp_path / "no-config.toml"))
    env.pop("SWARMHUB_TOKEN", None)
    r = subprocess.run([sys.executable, "-c", _PARSE, json.dumps(commands)],
                       capture_output=True, text=True, timeout=120, env=env, check=True)
    return dict(json.loads(r.stdout))


def test_get_parses_every_option_without_pydantic(tmp_path: Path) -> None:
    got = _parse(tmp_path, get=[
        "x.torrent", "-o", "out", "--peer", "h:1", "--peer", "h:2", "--timeout", "2.5",
        "--download-limit", "100", "--json", "-vv", "--seed-after", "3", "--mode", "cs"],
        create=[str(tmp_path), "--piece-size", "64", "-t", "http://t/a"])
    assert got["pydantic"] is False
    g = got["get"]
    assert g["torrent"] == ["str", "x.torrent"]
    assert g["output"] == ["PosixPath", "out"]
    assert g["peer"] == ["list", ["h:1", "h:2"]]
    assert g["tracker"] == ["tuple", "()"]  # as Typer has it: None by the command
    assert g["timeout"] == ["float", 2.5]
    assert g["seed_after"] == ["float", 3.0]
    assert g["download_limit"] == ["int", 100]
    assert g["upload_limit"] == ["NoneType", None]
    assert g["json_progress"] == ["bool", True]
    assert g["verbose"] == ["int", 2]
    assert g["mode"] == ["str", "cs"]
    c = got["create"]
    assert c["path"] == ["PosixPath", str(tmp_path)]
    assert c["piece_size"] == ["int", 64] and c["tracker"] == ["list", ["http://t/a"]]


def test_defaults_need_no_pydantic_either(tmp_path: Path) -> None:
    """Typer checks the defaults too (``-o`` is Path("."), a PosixPath)."""
    got = _parse(tmp_path, get=["x.torrent"], seed=[str(tmp_path)])
    assert got["pydantic"] is False
    assert got["get"]["output"] == ["PosixPath", "."]
    assert got["get"]["timeout"] == ["float", 0.0] and got["get"]["verbose"] == ["int", 0]


def test_an_odd_value_gets_typers_own_check_and_message(tmp_path: Path) -> None:
    """Not decided here: Typer's pydantic checker runs (then loaded), with its message."""
    got = _parse(tmp_path, get=["x.torrent", "--timeout", "1e3", "--upload-limit", "1_0"])
    assert got["pydantic"] is True
    assert got["get"]["timeout"] == ["float", 1000.0]
    assert got["get"]["upload_limit"] == ["int", 10]
    bad = _parse(tmp_path, get=["x.torrent", "--upload-limit", "1.5"])
    assert bad["get"] == ("BadParameter: Invalid value for '--upload-limit': Input should be "
                          "a valid integer, unable to parse string as an integer")


def test_path_checks_still_apply(tmp_path: Path) -> None:
    """``exists=True`` on a Path argument is still Typer's check, with its message."""
    got = _parse(tmp_path, create=[str(tmp_path / "missing")])
    assert got["pydantic"] is False
    assert got["create"] == (f"BadParameter: Invalid value for 'path': path "
                             f"'{tmp_path / 'missing'}' does not exist.")
