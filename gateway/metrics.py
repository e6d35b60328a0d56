"""In-process metrics rendered in the Prometheus text format at /metrics.

Labels carry only sender ids, message types, codes and stages (no health data).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from typing import Any

Labels = tuple[tuple[str, str], ...]
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), "").replace(chr(34), "")}"' for k, v in labels)
    return "{" + inner + "}"


class Metrics:
    """Counters and histograms; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1.0, help_text: str = "", **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount
            if help_text:
                self._help.setdefault(name, help_text)

    def observe(self, name: str, seconds: float, help_text: str = "", **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._hist[name]
            row = series.get(key)
            if row is None:
                row = [0.0] * (len(_BUCKETS) + 2)  # buckets..., +Inf count, sum
                series[key] = row
            idx = bisect.bisect_left(_BUCKETS, seconds)
            for i in range(idx, len(_BUCKETS)):
                row[i] += 1
            row[len(_BUCKETS)] += 1
            row[len(_BUCKETS) + 1] += seconds
            if help_text:
                self._help.setdefault(name, help_text)

    def gauge_now(self, name: str, **labels: str) -> None:
        """Set a gauge to the current Unix time (e.g. last message seen per sender)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges[name][key] = time.time()

    def gauge_set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        """Set a gauge to ``value`` (e.g. records a worker has not handled yet)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges[name][key] = float(value)
            if help_text:
                self._help.setdefault(name, help_text)

    def value(self, name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        with self._lock:
            return self._counters.get(name, {}).get(key, 0.0)

    def total(self, name: str) -> float:
        with self._lock:
            return sum(self._counters.get(name, {}).values())

    def snapshot(self) -> dict[str, Any]:
        """Everything recorded, as JSON-able data (what another process of this gateway merges)."""
        with self._lock:
            return {"help": dict(self._help),
                    "counters": [[n, list(map(list, k)), v] for n, s in self._counters.items() for k, v in s.items()],
                    "gauges": [[n, list(map(list, k)), v] for n, s in self._gauges.items() for k, v in s.items()],
                    "hist": [[n, list(map(list, k)), list(r)] for n, s in self._hist.items() for k, r in s.items()]}

    def merged(self, *snapshots: dict[str, Any]) -> Metrics:
        """A new Metrics: this one plus ``snapshots`` (counters and histograms summed, newest gauge)."""
        out = Metrics()
        for snap in (self.snapshot(), *snapshots):
            out._help.update({k: v for k, v in snap.get("help", {}).items() if k not in out._help})
            for name, key, value in snap.get("counters", []):
                series = out._counters[name]
                k = tuple((str(a), str(b)) for a, b in key)
                series[k] = series.get(k, 0.0) + float(value)
            for name, key, value in snap.get("gauges", []):
                k = tuple((str(a), str(b)) for a, b in key)
                out._gauges[name][k] = max(out._gauges[name].get(k, 0.0), float(value))
            for name, key, row in snap.get("hist", []):
                k = tuple((str(a), str(b)) for a, b in key)
                mine = out._hist[name].get(k) or [0.0] * (len(_BUCKETS) + 2)
                out._hist[name][k] = [a + float(b) for a, b in zip(mine, row, strict=True)]
        return out

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                lines.append(f"# HELP {name} {self._help.get(name, name)}")
                lines.append(f"# TYPE {name} counter")
                lines.extend(f"{name}{_fmt(k)} {v:g}" for k, v in sorted(series.items()))
            for name, gseries in sorted(self._gauges.items()):
                if name in self._help:
                    lines.append(f"# HELP {name} {self._help[name]}")
                lines.append(f"# TYPE {name} gauge")
                lines.extend(f"{name}{_fmt(k)} {v:.3f}" for k, v in sorted(gseries.items()))
            for name, hseries in sorted(self._hist.items()):
                lines.append(f"# HELP {name} {self._help.get(name, name)}")
                lines.append(f"# TYPE {name} histogram")
                for k, row in sorted(hseries.items()):
                    for i, bound in enumerate(_BUCKETS):
                        lines.append(f"{name}_bucket{_fmt((*k, ('le', f'{bound:g}')))} {row[i]:g}")
                    lines.append(f"{name}_bucket{_fmt((*k, ('le', '+Inf')))} {row[len(_BUCKETS)]:g}")
                    lines.append(f"{name}_count{_fmt(k)} {row[len(_BUCKETS)]:g}")
                    lines.append(f"{name}_sum{_fmt(k)} {row[len(_BUCKETS) + 1]:g}")
        return "\n".join(lines) + "\n"
