"""Keep secrets out of the hub's logs: tokens, passkeys, Authorization values.

Why a filter on the handlers and not care at each call site: secrets ride in URLs
(``?token=``, ``?passkey=``, the web seed path ``/k/<passkey>/``) and URLs reach the log
from many places — aiohttp's access log, our tracker client announcing for the embedded
seeder, exception messages that quote a URL. :func:`install` puts a
:class:`RedactingFilter` on every handler of the root logger, so each record is cleaned
(message, arguments and traceback text) whatever logger it came from, at every level.
"""

from __future__ import annotations

import logging
import re

__all__ = ["REDACTED", "RedactingFilter", "install", "redact"]

REDACTED = "REDACTED"

_PATTERNS = (
    # query parameters: ?token=..., &passkey=... (also a percent-encoded '=')
    (re.compile(r"(?i)(\b(?:token|passkey|access_token)(?:=|%3D))[^&\s\"'#<>]+"),
     rf"\g<1>{REDACTED}"),
    # the web seed path of a private torrent: /k/<passkey>/<id>/<name>
    (re.compile(r"(/k/)[^/\s\"'?#]+"), rf"\g<1>{REDACTED}"),
    # Authorization header values
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<1>\g<2>{REDACTED}"),
)


def redact(text: str) -> str:
    """``text`` with every token, passkey and bearer credential replaced by REDACTED."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the formatted message and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add a :class:`RedactingFilter` to each handler of ``logger`` (default: root)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
