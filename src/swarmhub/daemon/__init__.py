"""The daemon: many torrents in one long-running process, driven through a JSON API.

``swarmhub daemon --state DIR`` keeps one :class:`~swarmhub.engine.session.Session`; what
it runs is described by small JSON files in ``DIR/torrents`` (:mod:`.state`), so a restart
or a ``kill -9`` loses no torrent, and the engine's resume data keeps verified pieces.
:mod:`.manager` decides what runs (pause, limits; :mod:`.queue` picks what starts,
:mod:`.watch` adds what lands in the watch folder), :mod:`.app` is the HTTP API
(``DIR/api.token`` as a bearer token, Server-Sent Events, ``/api/openapi.yaml``), and
``swarmhub remote`` (:mod:`swarmhub.remote`) is its command-line client.
"""

from __future__ import annotations

__all__: list[str] = []
