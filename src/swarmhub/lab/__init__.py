"""Lab: emulated hosts, scenarios, distribution-time bounds and reports."""

__all__: list[str] = []
