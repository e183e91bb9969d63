"""/metrics: every part's counters and gauges in the Prometheus text format (0.0.4).

Each long-running part exposes ``metric_samples()``: a list of ``(name, value, help, kind)``
(``name`` may carry labels, ``gpux_resting_orders{class="H100"}``; ``kind`` is gauge or counter).
The composition root adds each part's method here; the gateway serves `Metrics.render`.

    metrics = Metrics()
    metrics.add(engine.metric_samples)
    text = metrics.render()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Sample = tuple[str, float | int, str, str]  # name (with labels), value, help, kind


class Metrics:
    """The metric sources of a process, rendered in the order they were added."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[Sample]]] = []

    def add(self, source: Callable[[], Iterable[Sample]]) -> None:
        self._sources.append(source)

    def render(self) -> str:
        """Every metric, one per line, each family's HELP and TYPE before its first sample."""
        out: list[str] = []
        seen: set[str] = set()
        for source in self._sources:
            for name, value, help_, kind in source():
                base = name.split("{", 1)[0]
                if base not in seen:
                    seen.add(base)
                    if help_:
                        out.append(f"# HELP {base} {help_}")
                    out.append(f"# TYPE {base} {kind or 'gauge'}")
                out.append(f"{name} {value}")
        return "\n".join(out) + "\n"


class Health:
    """The health checks of a process: each returns "ok" or what is wrong ("sequencer stopped: ...")."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], str]] = {}

    def add(self, name: str, check: Callable[[], str]) -> None:
        self._checks[name] = check

    def report(self) -> dict[str, str]:
        out = {}
        for name, check in self._checks.items():
            try:
                out[name] = check()
            except Exception as e:  # a check that fails is a part that is not ok
                out[name] = f"health check failed: {e!r}"
        return out
