"""Accounts: token extraction, roles, revocation and the first admin token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from swarmhub.hub.auth import (
    Forbidden,
    Role,
    Unauthorized,
    authenticate,
    ensure_admin_token,
    extract_token,
    has_role,
    require,
)
from swarmhub.hub.catalog import Catalog


@pytest.fixture
def cat(tmp_path: Path) -> Any:
    c = Catalog(tmp_path / "cat.sqlite3")
    yield c
    c.close()


def req(path: str = "/", token: str | None = None, header: str | None = None) -> Any:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if header is not None:
        headers["Authorization"] = header
    return make_mocked_request("GET", path, headers=headers)


def test_roles_are_ordered() -> None:
    assert Role.ADMIN > Role.PUBLISHER > Role.READER
    assert Role.parse("publisher") is Role.PUBLISHER


def test_extract_token_from_header_and_query() -> None:
    assert extract_token(req(token="abc")) == "abc"
    assert extract_token(req("/f/x?token=q")) is None
    assert extract_token(req("/f/x?token=q"), allow_query=True) == "q"
    assert extract_token(req()) is None
    with pytest.raises(Unauthorized, match="Bearer"):
        extract_token(req(header="Basic dXNlcjpwYXNz"))


async def test_require_checks_role_and_revocation(cat: Catalog) -> None:
    reader_secret, reader = cat.add_token("reader")
    pub_secret, pub = cat.add_token("publisher")
    with pytest.raises(Unauthorized):
        await require(req(), cat, Role.READER)
    with pytest.raises(Forbidden, match="publisher role"):
        await require(req(token=reader_secret), cat, Role.PUBLISHER)
    assert (await require(req(token=pub_secret), cat, Role.PUBLISHER)).id == pub.id
    assert (await require(req(token=pub_secret), cat, Role.READER)).id == pub.id
    with pytest.raises(Forbidden, match="invalid or revoked"):
        await authenticate(req(token="not-a-token"), cat)
    cat.revoke_token(pub.id)
    with pytest.raises(Forbidden, match="invalid or revoked"):
        await require(req(token=pub_secret), cat, Role.READER)
    assert has_role(reader, Role.READER) and not has_role(reader, Role.ADMIN)
    assert not has_role(None, Role.READER)


def test_first_start_creates_one_admin_token(cat: Catalog) -> None:
    secret = ensure_admin_token(cat)
    assert secret is not None
    found = cat.token_for_secret(secret)
    assert found is not None and found.role == "admin"
    assert ensure_admin_token(cat) is None
    assert len(cat.list_tokens()) == 1
