"""Accounts: bearer tokens with roles (admin > publisher > reader), stored only as hashes.

A token is ``secrets.token_urlsafe(32)`` (256 bits), so its SHA-256 is a safe stand-in:
a stolen database reveals no usable secret, and a lookup by hash needs no slow KDF. The
hash found is compared again with :func:`hmac.compare_digest` so nothing on the path
depends on secret bytes in data-dependent time. Every request looks its token up again
(no cache), which is what makes a revocation effective for the very next request.

Tokens come in ``Authorization: Bearer <token>``; downloads (where a browser or ``curl``
follows a plain link) may also pass ``?token=``.

A wrong token is logged (address, never the token) and counts against its address in
the app's :class:`swarmhub.hub.limits.LoginThrottle`: past a few failures, attempts
with a token from that address wait their turn (an ``asyncio.sleep``, so other clients
are not slowed), and are refused with 429 when the queue is long.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from aiohttp import web

from swarmhub.errors import AuthError
from swarmhub.hub.catalog import CatalogBase, TokenRecord
from swarmhub.hub.limits import LIMITS_KEY, Limits
from swarmhub.hub.redact import redact

__all__ = [
    "Forbidden",
    "Role",
    "TooManyFailures",
    "Unauthorized",
    "authenticate",
    "ensure_admin_token",
    "extract_token",
    "has_role",
    "require",
]


class Role(enum.IntEnum):
    """Roles in increasing power; a role may do everything the ones below it may."""

    READER = 1
    PUBLISHER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        return cls[name.upper()]


class Unauthorized(AuthError):
    """No credentials where they are needed (HTTP 401)."""

    status = 401


class Forbidden(AuthError):
    """Credentials that are wrong, revoked or not powerful enough (HTTP 403)."""

    status = 403


class TooManyFailures(AuthError):
    """Too many wrong tokens from this address lately (HTTP 429, ``Retry-After``)."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


log = logging.getLogger(__name__)


def _limits(request: web.BaseRequest) -> Limits | None:
    app = getattr(request, "app", None)
    limits = None if app is None else app.get(LIMITS_KEY)
    return limits if isinstance(limits, Limits) else None


def extract_token(request: web.BaseRequest, *, allow_query: bool = False) -> str | None:
    """The token of a request, or None when it carries none."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return value.strip()
    if allow_query:
        token = request.query.get("token")
        if token:
            return token
    return None


async def authenticate(
    request: web.BaseRequest, catalog: CatalogBase, *, allow_query: bool = False
) -> TokenRecord | None:
    """The live token of the request, None without one; Forbidden if unknown or revoked."""
    secret = extract_token(request, allow_query=allow_query)
    if secret is None:
        return None
    limits = _limits(request)
    source = (request.remote or "?") if limits is None else limits.source(request)
    loop = asyncio.get_running_loop()
    if limits is not None:
        wait = limits.logins.wait(source, loop.time())
        if wait is None:
            retry = limits.logins.retry_after(source, loop.time())
            raise TooManyFailures(
                f"too many wrong tokens from {source}; retry in {retry} s", retry
            )
        if wait > 0:
            await asyncio.sleep(wait)
    record = None if len(secret) > 512 else await catalog.run(catalog.token_for_secret, secret)
    if record is None or not record.active:
        failures = 1 if limits is None else limits.logins.failed(source, loop.time())
        log.warning(
            "failed login from %s: %s token on %s %s (%d recent failure(s) from there)",
            source,
            "unknown" if record is None else f"revoked ({record.id})",
            request.method,
            redact(request.path),
            failures,
        )
        raise Forbidden("invalid or revoked token")
    return record


def has_role(token: TokenRecord | None, role: Role) -> bool:
    return token is not None and token.active and Role.parse(token.role) >= role


async def require(
    request: web.BaseRequest, catalog: CatalogBase, role: Role, *, allow_query: bool = False
) -> TokenRecord:
    """The request's token if it has at least ``role``; Unauthorized/Forbidden otherwise."""
    token = await authenticate(request, catalog, allow_query=allow_query)
    if token is None:
        raise Unauthorized(f"this needs a {role.name.lower()} token (Authorization: Bearer …)")
    if not has_role(token, role):
        raise Forbidden(f"this needs the {role.name.lower()} role; the token is {token.role}")
    return token


def ensure_admin_token(catalog: CatalogBase) -> str | None:
    """On a hub's first start (no tokens at all), create an admin token and return it once.

    Only its hash is stored, so this is the one chance to show it; later starts get None.
    """
    if catalog.count_tokens():
        return None
    secret, _ = catalog.add_token("admin", "initial admin")
    return secret
