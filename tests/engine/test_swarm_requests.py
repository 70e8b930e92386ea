"""The swarm core makes its Request messages in a compiled loop (``swarm._requests``), and
the per-block messages spell out their ``__init__`` (``wire/messages.py``, compiled with
mypyc: the dataclass-made one would stay interpreted). Both must make exactly what the
dataclass would: the fields, in order, nothing else."""

from __future__ import annotations

import dataclasses

import pytest

from swarmhub.engine import swarm
from swarmhub.engine.picker import Block
from swarmhub.wire import messages as m


def test_requests_are_the_objects_the_constructor_makes() -> None:
    blocks = [Block(0, 0, 16384), Block(7, 16384, 16384), Block(2**31, 2**40, 100)]
    made = swarm._requests(blocks)
    assert made == tuple(m.Request(*b) for b in blocks)
    assert all(type(r) is m.Request for r in made)
    assert [hash(r) for r in made] == [hash(m.Request(*b)) for b in blocks]
    assert [(r.index, r.begin, r.length) for r in made] == blocks
    assert swarm._requests([]) == ()


@pytest.mark.parametrize("cls", [m.Have, m.Request, m.Piece, m.Cancel, m.RejectRequest])
def test_spelled_out_init_sets_every_field(cls: type) -> None:
    fields = dataclasses.fields(cls)
    assert all(f.init and f.default is dataclasses.MISSING for f in fields)
    values = [b"xy" if f.type in ("bytes", bytes) else 1000 + i for i, f in enumerate(fields)]
    msg = cls(*values)
    assert dataclasses.astuple(msg) == tuple(values)
    assert msg == cls(**{f.name: v for f, v in zip(fields, values, strict=True)})
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.index = 1
    assert not hasattr(cls, "__post_init__")
