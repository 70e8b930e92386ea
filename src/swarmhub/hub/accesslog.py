"""The hub's access log: secrets redacted, and the bytes actually sent.

aiohttp's default access log writes the request line as received (``?token=``,
``/k/<passkey>/``) and counts the bytes that went through its writer, which misses a
``sendfile`` body (391 bytes logged for a 3 MB download). The origin adds its sendfile
bytes to ``request[SENDFILE_BYTES_KEY]``; this logger adds them to the count.
"""

from __future__ import annotations

import datetime

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from swarmhub.hub.origin import SENDFILE_BYTES_KEY
from swarmhub.hub.redact import redact

__all__ = ["HubAccessLogger"]


class HubAccessLogger(AbstractAccessLogger):
    """Apache combined-style lines, secrets redacted, real body bytes (sendfile included).

    ``%a %t "%r" %s %b "%{Referer}i" "%{User-Agent}i"`` as aiohttp writes by default;
    the ``log_format`` argument is ignored.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        try:
            version = f"{request.version.major}.{request.version.minor}"
            line = redact(f"{request.method} {request.path_qs} HTTP/{version}")
            sent = response.body_length + int(request.get(SENDFILE_BYTES_KEY, 0))
            now = datetime.datetime.now(datetime.UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
            self.logger.info(
                '%s [%s] "%s" %d %d "%s" "%s"',
                request.remote or "-",
                now,
                line,
                response.status,
                sent,
                redact(request.headers.get("Referer", "-")),
                request.headers.get("User-Agent", "-"),
                extra={"status": response.status, "bytes_sent": sent, "duration": time},
            )
        except Exception:
            self.logger.exception("cannot write an access log line")
