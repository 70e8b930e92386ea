"""Compile the swarm core and the simulator with mypyc into src/swarmhub/_mypyc/.

    .venv/bin/python scripts/build-compiled.py [--force]

Run by ``make setup``. Optional: `lab simulate` runs ~1.7x faster compiled, and if
anything here fails the pure modules are used (swarmhub/_compiled.py decides at import,
and `swarmhub lab simulate` says which core ran). Nothing is written next to the
sources: mypyc builds in a scratch copy of src/, and only the extensions and a manifest
(hashes of the compiled sources and of the swarmhub modules they import) land in
_mypyc/. Up to date already (every hash matches): does nothing.
"""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from swarmhub._compiled import MANIFEST, MODULES, source_hash, stale  # noqa: E402

OUT = Path(MANIFEST).parent

# Added to CFLAGS (gcc and clang; a caller's own CFLAGS come after and win).
# -fno-semantic-interposition: the extension's functions call each other directly (and may be
# inlined) instead of through the PLT, as in CPython's own optimised builds; -fno-plt: calls
# into CPython's API go through the GOT. `lab simulate` 3.8 % faster on pyenv's CPython, 2.5 %
# on Debian's (bench/README.md, "py-47"), the results bit-identical: neither changes floating
# point. -march=native would (FMA contraction changed the simulator's event count): not used.
FAST_CFLAGS = ("-fno-semantic-interposition", "-fno-plt")

# Added to mypyc's primitives for this build (the manifest records them: a change rebuilds).
# bytearray[i]: mypyc declares CPyBytes_GetItem for "bytes[index], bytearray[index]" and the C
# function reads either object, but the op is typed for bytes only since mypyc gave bytearray
# its own type (1.18), so every compiled bytearray read became a generic PyObject_GetItem
# (boxed index, ~100 instructions: 2.5 M reads at N=64 `lab simulate`, the have bitfields).
# bytearray[i] = v: no op in mypyc at all (PyObject_SetItem, index and value boxed); ours is
# in OPS_HEADER, put in front of every C file by gcc's -include (posix builds only).
EXTRA_OPS = ("bytearray.__getitem__ -> CPyBytes_GetItem",
             "bytearray.__setitem__ -> CPySwarm_ByteArraySetItem (mypyc_ops.h)")
OPS_HEADER = Path(__file__).resolve().with_name("mypyc_ops.h")


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def dependencies(names: tuple[str, ...]) -> list[Path]:
    """The compiled modules and the swarmhub modules they import directly: the types
    and constants mypyc compiles in come from those (tuple layouts, Final values)."""
    seen: dict[str, Path] = {}
    for name in names:
        path = module_file(name)
        assert path is not None, name
        seen[name] = path
        parts = name.split(".")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                pkg = parts[: len(parts) - node.level] if node.level else []
                base = ".".join([*pkg, node.module] if node.module else pkg)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]  # or submodules
            for target in targets:
                dep = module_file(target) if target.startswith("swarmhub.") else None
                if dep is not None:
                    seen[target] = dep
    return sorted(set(seen.values()))


def up_to_date() -> bool:
    try:
        manifest = json.loads(Path(MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("ext_suffix") == importlib.machinery.EXTENSION_SUFFIXES[0]
        and manifest.get("cflags") == list(FAST_CFLAGS)
        and manifest.get("extra_ops") == list(EXTRA_OPS)
        and manifest.get("ops_header") == source_hash(OPS_HEADER)
        and stale(manifest["sources"], SRC) is None
        and set(MODULES) <= manifest["extensions"].keys()  # a module added since the build
        and all((OUT / rel).is_file() for rel in manifest["extensions"].values())
    )


def build() -> None:
    files = [module_file(n) for n in MODULES]
    with tempfile.TemporaryDirectory(prefix="swarmhub-mypyc-") as tmp:
        work = Path(tmp)
        shutil.copytree(SRC, work / "src", ignore=shutil.ignore_patterns(
            "_mypyc", "__pycache__", "*.so"))
        shutil.copy(ROOT / "pyproject.toml", work)  # mypy's settings (strict)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mypycify",
               *(str(f.relative_to(ROOT)) for f in files if f)]
        run = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if run.returncode:
            tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-15:])
            raise SystemExit(f"mypyc failed (the pure modules will be used):\n{tail}")
        sos = sorted((work / "src").rglob("*.so"))
        shutil.rmtree(OUT, ignore_errors=True)
        extensions: dict[str, str] = {}
        for so in sos:
            rel = so.relative_to(work / "src")
            dest = OUT / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(so, dest)
            name = ".".join([*rel.parent.parts, rel.name.split(".", 1)[0]])
            extensions[name] = str(rel)
    missing = set(MODULES) - set(extensions)
    if missing:
        raise SystemExit(f"mypyc built no extension for {sorted(missing)}")
    manifest = {
        "ext_suffix": importlib.machinery.EXTENSION_SUFFIXES[0],
        "cflags": list(FAST_CFLAGS),
        "extra_ops": list(EXTRA_OPS),
        "ops_header": source_hash(OPS_HEADER),
        "extensions": extensions,
        "sources": {str(p.relative_to(SRC)): source_hash(p) for p in dependencies(MODULES)},
    }
    Path(MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def mypycify(paths: list[str]) -> None:
    """What ``python -m mypyc PATHS`` runs (its generated setup.py, same options), with
    :data:`EXTRA_OPS` registered first (``-m mypyc`` builds in a child process that
    nothing here could reach) and :data:`FAST_CFLAGS`. Builds in the current directory."""
    if os.name == "posix":
        os.environ["CFLAGS"] = " ".join(
            [*FAST_CFLAGS, "-include", str(OPS_HEADER), os.environ.get("CFLAGS", "")]).strip()
    import mypy.build  # noqa: F401  (mypy's compiled modules first: an import cycle otherwise)
    from mypyc.build import mypycify as _mypycify
    from mypyc.ir.ops import ERR_FALSE, ERR_MAGIC
    from mypyc.ir.rtypes import bit_rprimitive, bytearray_rprimitive, int_rprimitive
    from mypyc.primitives.registry import method_op
    from setuptools import setup  # type: ignore[import-untyped]

    method_op(name="__getitem__", arg_types=[bytearray_rprimitive, int_rprimitive],
              return_type=int_rprimitive, c_function_name="CPyBytes_GetItem",
              error_kind=ERR_MAGIC)
    if os.name == "posix":  # (the header goes in through CFLAGS: gcc and clang)
        method_op(name="__setitem__",
                  arg_types=[bytearray_rprimitive, int_rprimitive, int_rprimitive],
                  return_type=bit_rprimitive, c_function_name="CPySwarm_ByteArraySetItem",
                  error_kind=ERR_FALSE)
    setup(name="mypyc_output", script_args=["build_ext", "--inplace"],
          ext_modules=_mypycify(paths, opt_level="3", debug_level="1"))


def main() -> None:
    if sys.argv[1:2] == ["--mypycify"]:
        mypycify(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args()
    if not args.force and up_to_date():
        print(f"compiled modules up to date ({OUT.relative_to(ROOT)})")
        return
    print(f"compiling {len(MODULES)} modules with mypyc (a minute or two) ...", flush=True)
    build()
    print(f"compiled modules in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
