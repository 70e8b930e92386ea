"""The hub: aiohttp app with the HTTP origin, tracker, catalog, accounts and admin page.

Submodules are imported directly (``from swarmhub.hub.tracker import make_tracker_app``);
this package imports none of them, so ``python -m swarmhub.hub.tracker`` runs cleanly.
"""

__all__: list[str] = []
