"""swarmhub: share files client-server, peer-to-peer, or both at once."""

__version__ = "0.1.0"
