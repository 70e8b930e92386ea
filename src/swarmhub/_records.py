"""``__eq__``, ``__hash__`` and ``__repr__`` of a dataclass, made without ``exec``.

Why: Python 3.11's ``@dataclass`` compiles each method it adds from source text (an
``exec`` per method): ~6 per frozen class, ~30 % of ``get``'s CPU before its first peer
(callgrind, startup-43). A class declared ``@dataclass(eq=False, repr=False)`` and passed
to :func:`value_methods` gets these from closures over its field names instead, behaving
exactly as the generated ones: the same fields (``compare``, ``hash``, ``repr`` flags),
the same tuple comparison and hash values (frozen; unhashable otherwise), the same text.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

__all__ = ["mypyc_attr", "value_methods"]

try:  # a compiled class's layout (``acyclic``): one fallback for every module that uses it
    from mypy_extensions import mypyc_attr
except ImportError:  # not installed (no mypy): the decorator only speaks to mypyc
    def mypyc_attr(*_args: str, **_kwargs: object) -> Callable[[Any], Any]:  # type: ignore[misc]
        return lambda cls: cls

T = TypeVar("T")


def _key(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The fields' values as a tuple (what the generated methods compare and hash)."""
    if len(names) >= 2:
        return attrgetter(*names)  # a tuple already
    if names:
        (name,) = names
        return lambda obj: (getattr(obj, name),)
    return lambda obj: ()


def value_methods(cls: type[T]) -> type[T]:
    """Add the methods ``@dataclass`` would with ``eq=True, repr=True`` (and the class's
    ``frozen``): ``__hash__`` for a frozen class, ``None`` (unhashable) for another."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert not params.eq and not params.repr and not params.order and not params.unsafe_hash
    assert not {"__eq__", "__hash__", "__repr__"} & cls.__dict__.keys(), cls
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    compared = _key(tuple(f.name for f in fields if f.compare))
    hashed = _key(tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash)))
    shown = tuple(f.name for f in fields if f.repr)

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return compared(self) == compared(other)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(hashed(self))

    @reprlib.recursive_repr("...")
    def __repr__(self: Any) -> str:
        name: str = self.__class__.__qualname__
        return name + "(" + ", ".join(
            [f"{n}={getattr(self, n)!r}" for n in shown]) + ")"

    for fn in (__eq__, __hash__, __repr__):
        fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
        setattr(cls, fn.__name__, fn)
    if not params.frozen:
        cls.__hash__ = None  # type: ignore[assignment]
    return cls
