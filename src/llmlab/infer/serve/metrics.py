"""GET /metrics in Prometheus' text format (prometheus-client): the engine's queue, KV blocks and prefix cache read at
each scrape, and per-request latencies (time to first token, time per output token) observed as requests finish."""

from __future__ import annotations

# the buckets of vLLM's histograms, in seconds
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)


class EngineCollector:
    """A Prometheus collector reading engine.stats() at every scrape."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        """The engine's gauges and counters now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.engine.stats()
        gauges = {"requests_waiting": ("Requests queued, not yet running.", stats.waiting),
                  "requests_running": ("Requests in the running batch.", stats.running),
                  "kv_blocks_used": ("KV cache blocks in use.", stats.kv_blocks_used),
                  "kv_blocks_total": ("KV cache blocks in the pool.", stats.kv_blocks_total),
                  "prefix_cache_hit_rate": ("Prefix-cache blocks found over blocks looked up, since the start.",
                                            stats.prefix_cache_hits / max(1, stats.prefix_cache_queries))}
        for name, (documentation, value) in gauges.items():
            yield GaugeMetricFamily(f"llmlab_{name}", documentation, value=value)
        counters = {"prefix_cache_queries": ("Prefix-cache blocks looked up.", stats.prefix_cache_queries),
                    "prefix_cache_hits": ("Prefix-cache blocks found.", stats.prefix_cache_hits),
                    "generation_tokens": ("Tokens generated.", stats.generated_tokens),
                    "preemptions": ("Sequences preempted for lack of KV blocks.", stats.preemptions)}
        for name, (documentation, value) in counters.items():
            yield CounterMetricFamily(f"llmlab_{name}", documentation, value=value)


class Metrics:
    """The server's registry: the engine's collector, latency histograms and request counters."""

    def __init__(self, engine):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()  # one per server, none global
        self.registry.register(EngineCollector(engine))
        self.time_to_first_token = Histogram("llmlab_time_to_first_token_seconds", "Time to the first new token.",
                                             buckets=TTFT_BUCKETS, registry=self.registry)
        self.time_per_output_token = Histogram("llmlab_time_per_output_token_seconds",
                                               "Time per new token after the first.", buckets=TPOT_BUCKETS,
                                               registry=self.registry)
        self.finished = Counter("llmlab_requests_finished", "Engine requests finished, by finish reason.",
                                ["finish_reason"], registry=self.registry)
        self.prompt_tokens = Counter("llmlab_prompt_tokens", "Prompt tokens of finished requests.",
                                     registry=self.registry)

    def observe(self, output) -> None:
        """Record a finished RequestOutput: its latencies, finish reasons and prompt tokens."""
        self.prompt_tokens.inc(len(output.prompt_token_ids))
        for sequence in output.outputs:
            self.finished.labels(finish_reason=sequence.finish_reason or "unknown").inc()
        if output.first_token_time is None or output.arrival_time is None:
            return
        self.time_to_first_token.observe(max(0.0, output.first_token_time - output.arrival_time))
        later = max(len(sequence.token_ids) for sequence in output.outputs) - 1
        if later > 0 and output.finish_time is not None:
            self.time_per_output_token.observe(max(0.0, output.finish_time - output.first_token_time) / later)

    def text(self) -> tuple[bytes, str]:
        """The exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
