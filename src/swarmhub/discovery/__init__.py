"""Finding peers: HTTP trackers now; UDP trackers, DHT, PEX and LSD to come."""

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

__all__ = [
    "AnnounceRequest",
    "AnnounceResponse",
    "TrackerTiers",
    "announce",
    "build_announce_url",
    "parse_announce_response",
    "scrape",
    "scrape_url",
]
