"""What a server is doing, in Prometheus' text format (``GET /metrics``), for dashboards and alerts.

Counters only grow (requests, tokens); gauges say how things stand now (requests waiting and running, KV
blocks in use and cached); histograms count observations into buckets, from which Prometheus computes
percentiles: *time to first token* (what a person waits before text appears: queueing plus prefill) and
*inter-token latency* (how fast the text then flows: one decode step, shared with every other running
request). The names follow vLLM's, with our prefix.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """One server's metrics, in a registry of its own (two servers in one process, as in tests, do not mix)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llama_requests", "HTTP requests answered, by status code", ["status"], registry=r)
        self.prompt_tokens = Counter("llama_prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("llama_generation_tokens", "tokens generated", registry=r)
        self.time_to_first_token = Histogram(
            "llama_time_to_first_token_seconds", "from a request's arrival to its first token", registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.inter_token_latency = Histogram(
            "llama_inter_token_latency_seconds", "between two tokens of one request", registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.requests_waiting = Gauge("llama_requests_waiting", "requests in the queue", registry=r)
        self.requests_running = Gauge("llama_requests_running", "requests being decoded", registry=r)
        self.kv_blocks_in_use = Gauge("llama_kv_blocks_in_use", "KV cache blocks held by requests", registry=r)
        self.kv_blocks_cached = Gauge("llama_kv_blocks_cached", "free KV blocks still holding a cached prefix",
                                      registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
