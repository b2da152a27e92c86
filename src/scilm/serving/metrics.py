"""Prometheus metrics of one server: requests, latencies, batch sizes, queue depth, errors.

Each server owns a registry (not the process-wide default), so several servers in one process,
as in the tests, do not collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The Prometheus metrics of one server, in its own registry; ``queue_depth`` is read at each scrape."""

    def __init__(self, queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("scilm_requests_total", "HTTP requests by path and status.",
                                ["path", "status"], registry=r)
        self.latency = Histogram("scilm_request_latency_seconds", "Request latency by path.", ["path"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter("scilm_errors_total", "Requests answered with an error, by kind.", ["kind"],
                              registry=r)
        self.inputs = Counter("scilm_inputs_total", "Inputs (sequences or prompts) predicted.", registry=r)
        self.batch_size = Histogram("scilm_batch_size", "Inputs per model call (micro-batch size).",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("scilm_batch_seconds", "Seconds per model call.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("scilm_queue_depth", "Inputs waiting or running.", registry=r)
        self.queue_depth.set_function(queue_depth)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One model call of ``size`` inputs that took ``seconds`` (the batcher's ``on_batch`` hook)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.inputs.inc(size)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """One HTTP request: its path (or ``"other"``), status and latency in seconds; 4xx/5xx count as errors."""
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)
        if status >= 400:
            self.errors.labels(_error_kind(status)).inc()

    def render(self) -> bytes:
        """The metrics in Prometheus's text exposition format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def _error_kind(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            408: "timeout", 413: "too_large", 415: "not_json", 422: "invalid_input", 499: "client_gone",
            503: "overloaded"}.get(status, "server" if status >= 500 else "client")
