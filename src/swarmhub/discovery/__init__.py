"""Finding peers: HTTP and UDP trackers now; DHT, PEX and LSD to come."""

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
