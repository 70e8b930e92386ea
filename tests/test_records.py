"""swarmhub._records.value_methods: the eq/hash/repr ``@dataclass`` would generate, without
exec; checked against dataclasses' own on the same declarations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from swarmhub._records import value_methods


def _pair(body: dict[str, Any], frozen: bool = True, slots: bool = True) -> tuple[type, type]:
    """The same class twice: dataclasses' methods, and value_methods'."""
    def make(name: str) -> type:
        ns = {"__annotations__": dict.fromkeys(body, "Any"), "__module__": __name__,
              "__qualname__": name, **{k: v for k, v in body.items() if v is not None}}
        return type(name, (), ns)

    ref: type = dataclass(frozen=frozen, slots=slots)(make("Rec"))
    ours: type = value_methods(dataclass(frozen=frozen, slots=slots, eq=False, repr=False)(
        make("Rec")))
    return ref, ours


SHAPES: list[tuple[dict[str, Any], list[tuple[Any, ...]]]] = [
    ({}, [()]),
    ({"a": None}, [(1,), (2,), (float("nan"),), ((1, [2]),)]),
    ({"a": None, "b": None, "c": None}, [(1, b"x", None), (1, b"x", 0), (1, b"y", None)]),
    # not compared / not hashed / not shown, and hashed though not compared
    ({"a": None, "b": field(compare=False), "c": field(repr=False), "d": field(hash=False)},
     [(1, 2, 3, 4), (1, 5, 3, 4), (1, 2, 3, 9), (0, 2, 3, 4)]),
    ({"a": field(compare=False, hash=True), "b": None}, [(1, 2), (3, 2)]),
    ({"a": None, "b": field(default=7)}, [(1,), (1, 8)]),
]


@pytest.mark.parametrize(("body", "values"), SHAPES)
def test_the_same_as_dataclasses_own(body: dict[str, Any], values: list[tuple[Any, ...]]) -> None:
    ref, ours = _pair(body)
    r = [ref(*v) for v in values]
    o = [ours(*v) for v in values]
    assert [repr(x) for x in o] == [repr(x) for x in r]
    for i in range(len(values)):
        for j in range(len(values)):
            assert (o[i] == o[j], o[i] != o[j]) == (r[i] == r[j], r[i] != r[j])
        if all(_hashable(getattr(r[i], f.name)) for f in dataclasses.fields(ref)):
            assert hash(o[i]) == hash(r[i])
        assert o[i].__eq__(r[i]) is NotImplemented  # another class, as dataclasses'
        assert (o[i] == 1) is False and o[i].__eq__(1) is NotImplemented
    for f in dataclasses.fields(ours)[:1]:  # still frozen (dataclass's own guard)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(o[0], f.name, 1)
    assert dataclasses.replace(o[0]) == o[0]
    assert ours.__eq__.__qualname__ == "Rec.__eq__"


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def test_a_mutable_record_compares_and_is_unhashable_as_dataclasses_makes_it() -> None:
    ref, ours = _pair({"a": None, "b": None}, frozen=False, slots=False)
    assert ref.__hash__ is None and ours.__hash__ is None
    a, b = ours(1, [2]), ours(1, [2])
    assert a == b and repr(a) == repr(ref(1, [2])) == "Rec(a=1, b=[2])"
    b.b.append(3)
    assert a != b
    with pytest.raises(TypeError):
        hash(a)


def test_a_record_that_holds_itself_shows_dots_as_dataclasses_does() -> None:
    ref, ours = _pair({"a": None}, frozen=False, slots=False)
    r, o = ref([]), ours([])
    r.a.append(r)
    o.a.append(o)
    assert repr(o) == repr(r) == "Rec(a=[...])"


def test_the_message_classes_keep_their_value_semantics() -> None:
    """Compiled or not: equal by value, hashed as the field tuple, shown as before."""
    from swarmhub.engine.actions import Completed, Connect
    from swarmhub.wire.messages import Choke, Have, Request

    r = Request(1, 2, 3)
    have: object = Have(1)
    assert r == Request(1, 2, 3) and r != Request(1, 2, 4) and r != have
    assert hash(r) == hash((1, 2, 3)) and hash(Choke()) == hash(())
    assert len({Choke(), Choke(), Have(1), Have(1)}) == 2
    assert repr(r) == "Request(index=1, begin=2, length=3)" and repr(Choke()) == "Choke()"
    assert Connect(("h", 1)) == Connect(("h", 1)) and Completed() == Completed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.index = 2  # type: ignore[misc]
