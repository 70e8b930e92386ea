"""Command-line values of plain types (str, int, float, bool, Path, lists) without pydantic.

Why: Typer (0.29 here) checks every parameter's value, defaults included, with a
pydantic ``TypeAdapter`` built per parameter on first use. A ``swarmhub get`` has 21 such
parameters: importing pydantic and building them cost ~75 ms of CPU before the first peer
connection (issue 9: connect within 0.5 s of process start). The values our commands take
are plain, so :func:`install` gives each plain parameter a checker that does what the
adapter would do for the unambiguous inputs (a str, ASCII digits, a value already of the
type) and hands anything else to Typer's own (pydantic) checker: same results, same
error messages, pydantic imported only when a value needs it.

It relies on Typer internals (``_TyperParameter._runtime_param``, ``RuntimeParam``,
``coerce_cli_path``); where they are missing (another Typer), nothing is installed and
Typer does everything as before. ``tests/test_startup.py`` notices that (pydantic loaded).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, get_args, get_origin

__all__ = ["install", "plain_value"]

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_NO_ANSWER = object()  # plain_value: not a case it decides


def plain_value(annotation: Any, value: Any) -> Any:
    """``value`` as ``annotation`` where the answer is the one pydantic's lax mode gives,
    else ``_NO_ANSWER`` (the caller asks Typer's own checker)."""
    if type(value) is annotation or (annotation is Path and isinstance(value, Path)):
        return value  # a default, or a value Typer has made already (PosixPath for Path)
    if not isinstance(value, str):
        return _NO_ANSWER
    if annotation is str:
        return value
    if annotation is int and _INT.fullmatch(value):
        return int(value)
    if annotation is float and _FLOAT.fullmatch(value):
        return float(value)
    if annotation is Path:
        return Path(value)
    return _NO_ANSWER


def _leaf(annotation: Any) -> Any:
    """The element type of ``list[X]``, or ``annotation`` itself; None if neither is plain."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
    return annotation if annotation in (str, int, float, bool, Path) else None


@functools.cache
def _plain_param_class() -> type | None:
    """Typer's ``RuntimeParam`` with the plain cases decided here (None: not this Typer)."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_path
    except ImportError:
        return None

    @dataclasses.dataclass(frozen=True)
    class PlainParam(RuntimeParam):
        """Decides the plain cases; builds and asks Typer's own checker for the rest."""

        descriptor: Any = None
        fallback: Any = None  # Typer's own checker, made on first need

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            leaf = _leaf(self.annotation)
            many = leaf is not self.annotation
            items = list(value) if many and isinstance(value, list | tuple) else [value]
            done = [plain_value(leaf, v) for v in items]
            decided = all(d is not _NO_ANSWER for d in done)
            if decided and (many or not isinstance(value, list | tuple)):
                if leaf is Path:  # Typer's own checks: exists, file_okay, resolve_path...
                    done = [coerce_cli_path(d, self.parameter_info, path_type=Path,
                                            param=param, ctx=ctx) for d in done]
                return done if many else done[0]
            if self.fallback is None:  # pydantic, imported now
                object.__setattr__(self, "fallback", build_runtime_param(self.descriptor))
            return self.fallback._coerce_value(value, param=param, ctx=ctx)

    return PlainParam


def _is_plain(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    return _leaf(descriptor.annotation) is not None and descriptor.file_annotation is None \
        and info.parser is None and info.min is None and info.max is None \
        and info.path_type is None


def install() -> None:
    """From now on, every plain Typer parameter (those Typer makes itself, such as
    ``--help``, included) gets the checker above when Typer first asks for its checker.
    Idempotent; a Typer that lacks the internals it needs is left alone."""
    cls = _plain_param_class()
    try:
        from typer.core import _TyperParameter
    except ImportError:
        return
    original = _TyperParameter.get_runtime_param
    if cls is None or getattr(original, "__swarmhub_plain__", False):
        return

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None and _is_plain(self.type_descriptor):
            desc = self.type_descriptor
            self._runtime_param = cls(parameter_info=desc.parameter_info,
                                      annotation=desc.annotation, descriptor=desc)
        return original(self)

    get_runtime_param.__swarmhub_plain__ = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
