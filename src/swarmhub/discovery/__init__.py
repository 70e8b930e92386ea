"""Finding peers: HTTP and UDP trackers, the DHT, PEX.

The names below load on first use (PEP 562): a command that finds its peers another way
(``get --peer``, the DHT) never imports the tracker client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmhub.discovery.tracker import (
        AnnounceRequest,
        AnnounceResponse,
        TrackerTiers,
        announce,
        build_announce_url,
        parse_announce_response,
        scrape,
        scrape_url,
    )
    from swarmhub.discovery.udp_tracker import UdpTrackerClient

__all__ = [
    "AnnounceRequest",
    "AnnounceResponse",
    "TrackerTiers",
    "UdpTrackerClient",
    "announce",
    "build_announce_url",
    "parse_announce_response",
    "scrape",
    "scrape_url",
]



def dht_wanted(settings: Any, *, no_dht: bool, bootstrap: str | None) -> bool:
    """Whether ``get``/``seed`` run a DHT node: ``settings.dht`` (``SWARMHUB_DHT``) or an
    explicit bootstrap list turns it on, ``--no-dht`` off. Kept here, in a module the CLI
    loads anyway, so the answer costs no import of the DHT package (~30 ms)."""
    return not no_dht and (bool(settings.dht) or bootstrap is not None)


_HOMES = {name: "swarmhub.discovery.tracker" for name in __all__}
_HOMES["UdpTrackerClient"] = "swarmhub.discovery.udp_tracker"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
