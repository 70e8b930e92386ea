"""The primitives ``scripts/build-compiled.py`` adds to mypyc (``EXTRA_OPS``).

mypyc compiles a bytearray item read or store into a generic ``PyObject_GetItem`` /
``PyObject_SetItem`` (index and value boxed); the build adds a native read and store. They
must be used (the generated C calls them) and must behave exactly like Python's own, errors
included: a small module is built the way the core is, and run against the interpreter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-compiled.py"

_MODULE = '''
def get(b: bytearray, i: int) -> int:
    return b[i]


def put(b: bytearray, i: int, v: int) -> None:
    b[i] = v
'''

#: (index, value) pairs: in range, negative, out of range either way, bytes out of 0..255,
#: and ints too large for a machine word (mypyc keeps those boxed: Python's path)
CASES = [(0, 0), (3, 255), (-1, 7), (-8, 1), (8, 1), (-9, 1), (2, 256), (2, -1),
         (2, 1 << 70), (1 << 70, 1), (-(1 << 70), 1)]

_RUN = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import baops

def outcome(f, *args):
    try:
        return ["ok", f(*args)]
    except Exception as e:
        return [type(e).__name__, str(e).replace("bytearray ", "")]

def py_get(b, i):
    return b[i]

def py_put(b, i, v):
    b[i] = v

rows = []
for i, v in json.loads(sys.argv[2]):
    for f, ref in ((baops.get, py_get), (baops.put, py_put)):
        args = (i,) if f is baops.get else (i, v)
        b1, b2 = bytearray(range(10, 18)), bytearray(range(10, 18))
        rows.append([f.__name__, i, v, outcome(f, b1, *args), list(b1),
                     outcome(ref, b2, *args), list(b2)])
print(json.dumps({"file": baops.__file__, "rows": rows}))
'''


@pytest.mark.slow
def test_bytearray_items_compile_to_the_added_primitives_and_behave_like_python(
        tmp_path: Path) -> None:
    need(shutil.which("gcc") is not None or shutil.which("cc") is not None,
         "a C compiler (make setup's mypyc build)")
    (tmp_path / "baops.py").write_text(_MODULE)
    build = subprocess.run([sys.executable, str(BUILD), "--mypycify", "baops.py"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]

    c = "\n".join(p.read_text() for p in (tmp_path / "build").glob("*.c"))
    assert "CPyBytes_GetItem(" in c and "CPySwarm_ByteArraySetItem(" in c
    assert "PyObject_GetItem(cpy_r_b" not in c and "PyObject_SetItem(cpy_r_b" not in c

    run = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path), json.dumps(CASES)],
                         capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(run.stdout)
    assert out["file"].endswith(".so")  # the compiled module ran, not baops.py
    for name, i, v, got, after, want, want_after in out["rows"]:
        if name == "get" and abs(i) >= 1 << 62:
            # mypyc's read of an index beyond a machine word, as for bytes and list items
            assert got[0] == "OverflowError" and want[0] == "IndexError", got
            continue
        # the same result or the same error (mypyc's read says "index out of range" where
        # bytearray's says "bytearray index out of range": the word is dropped above)
        assert (got, after) == (want, want_after), (name, i, v)
