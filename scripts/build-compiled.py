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
        cmd = [sys.executable, "-m", "mypyc", *(str(f.relative_to(ROOT)) for f in files if f)]
        env = dict(os.environ)
        if os.name == "posix":
            env["CFLAGS"] = " ".join([*FAST_CFLAGS, env.get("CFLAGS", "")]).strip()
        run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
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
        "extensions": extensions,
        "sources": {str(p.relative_to(SRC)): source_hash(p) for p in dependencies(MODULES)},
    }
    Path(MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> None:
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
