"""Lab tests: register the ``netns`` marker (pyproject's marker list belongs to the lead)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "netns: builds network namespaces (needs root; fails under SWARMHUB_STRICT=1)"
    )
