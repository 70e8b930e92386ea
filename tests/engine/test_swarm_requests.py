"""The swarm core makes its Request messages without ``Request.__init__`` (see
``swarm._requests``): they must be the objects the constructor makes, and Request must
stay a frozen slots dataclass of exactly those three fields for that to hold."""

from __future__ import annotations

import dataclasses

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


def test_request_is_still_what_requests_assumes() -> None:
    fields = dataclasses.fields(m.Request)
    assert [f.name for f in fields] == ["index", "begin", "length"]
    assert all(f.init and f.default is dataclasses.MISSING for f in fields)
    assert m.Request.__slots__ == ("index", "begin", "length")
    assert not hasattr(m.Request, "__post_init__")
    assert m.Request.__dataclass_params__.frozen  # type: ignore[attr-defined]
