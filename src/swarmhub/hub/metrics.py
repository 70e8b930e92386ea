"""A tiny writer for the Prometheus text exposition format (version 0.0.4).

Why not ``prometheus_client``: the hub's numbers already live in its own objects (the
catalog, the tracker, the origin limiter, the seeder); they are read when ``/metrics`` is
scraped, not pushed into a registry. That needs only a serialiser — families with
``# HELP``/``# TYPE`` lines and escaped label values — which is some forty lines, fewer
than the glue a registry with custom collectors would take, and one dependency fewer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "MetricFamily", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(slots=True)
class MetricFamily:
    """One metric name with its type, help and samples (label set -> value)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.kind not in ("counter", "gauge"):
            raise ValueError(f"unsupported metric type {self.kind!r}")

    def add(self, value: float, labels: Mapping[str, str] | None = None) -> MetricFamily:
        labels = labels or {}
        for key in labels:
            if not _LABEL.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"invalid label name {key!r}")
        self.samples.append((labels, value))
        return self


def render(families: Iterable[MetricFamily]) -> str:
    """The exposition text of ``families`` (ends with a newline)."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{fam.name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{fam.name} {_number(value)}")
    return "\n".join(lines) + "\n"
