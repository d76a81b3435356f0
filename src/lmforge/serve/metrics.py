"""The server's Prometheus metrics (prometheus-client), in a registry of the app's own.

One registry per app, not the process-wide default, so that two servers in one process (tests, a benchmark)
count apart. Names follow Prometheus' conventions (`_total` counters, `_seconds` histograms) under `lmforge_`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a few milliseconds (a tiny model on a GPU) to tens of seconds (a long queue on a CPU).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmforge_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "prompt tokens of generation requests", registry=r)
        self.generated_tokens = Counter("lmforge_generated_tokens", "tokens generated", registry=r)
        self.rejected = Counter("lmforge_rejected_requests", "requests refused because the queue was full",
                                registry=r)
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "request received to first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("lmforge_inter_token_latency_seconds", "time between tokens of a stream",
                             buckets=ITL_BUCKETS, registry=r)
        Gauge("lmforge_running_sequences", "sequences in the engine's batch", registry=r).set_function(running)
        Gauge("lmforge_queue_depth", "sequences waiting for a slot of the batch", registry=r).set_function(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)
