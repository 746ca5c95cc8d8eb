"""Prometheus metrics on a registry owned by one app (two apps in one process never share counters)."""

from __future__ import annotations

import dataclasses

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from qla_agent.runtime.requests import Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000)
_TOP_LEVEL = {
    "live_sessions": "Sessions the engine holds (in memory or on disk).",
    "state_bytes": "Bytes of session state (live states and checkpoints) in memory.",
}
_LEVELS = frozenset({"running_requests", "waiting_requests", "loaded_sessions"})


class ServerMetrics:
    """Counters and histograms the routes update; engine gauges are read at scrape time."""

    def __init__(self, stats: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("qla_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=r)
        self.prompt_tokens = Counter("qla_prompt_tokens", "Prompt tokens of chat requests.", registry=r)
        self.completion_tokens = Counter("qla_completion_tokens", "Tokens generated.", registry=r)
        self.reused_tokens = Counter("qla_prefill_tokens_reused",
                                     "Prompt tokens taken from a session checkpoint instead of prefilled.",
                                     registry=r)
        self.ttft = Histogram("qla_time_to_first_token_seconds",
                              "From request arrival to the first generated text.",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.decode_rate = Histogram("qla_decode_tokens_per_second",
                                     "Decode speed of one request after its first token.",
                                     buckets=_RATE_BUCKETS, registry=r)
        self.in_flight = Gauge("qla_requests_in_flight", "Chat requests being generated now.", registry=r)
        if stats is not None:
            r.register(_EngineCollector(stats))

    def record_usage(self, usage: Usage) -> None:
        """Count one finished request's tokens."""
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        self.reused_tokens.inc(usage.cached_tokens)

    def record_timing(self, *, start: float, first: float | None, end: float, completion_tokens: int) -> None:
        """Time to first token and decode tokens/s (tokens after the first over the time after it)."""
        if first is None:
            return
        self.ttft.observe(max(first - start, 0.0))
        if completion_tokens > 1 and end > first:
            self.decode_rate.observe((completion_tokens - 1) / (end - first))

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's registry."""
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Reads `engine.stats()` at each scrape: live sessions and state bytes as `qla_<name>`, the
    engine's other counters as `qla_engine_<name>` (gauges for levels, counters for running totals)."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, value in _as_mapping(self._stats()).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if name in _TOP_LEVEL:
                yield GaugeMetricFamily(f"qla_{name}", _TOP_LEVEL[name], value=float(value))
            elif name in _LEVELS:
                yield GaugeMetricFamily(f"qla_engine_{name}", f"Engine {name.replace('_', ' ')} now.",
                                        value=float(value))
            else:
                yield CounterMetricFamily(f"qla_engine_{name}", f"Engine {name.replace('_', ' ')} since start.",
                                          value=float(value))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _as_mapping(stats: Any) -> Mapping[str, Any]:
    if isinstance(stats, Mapping):
        return stats
    if dataclasses.is_dataclass(stats):
        return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    return {}
