"""The student's Prometheus metrics (beside the HTTP metrics of shared.web.middleware)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class StudentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.completions = Counter("dsc_student_completions", "Chat completions by model and outcome", ["model", "outcome"], registry=registry)
        self.latency = Histogram(
            "dsc_student_completion_seconds", "Chat completion latency", ["model"], registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
        )
        self.ttft = Histogram(
            "dsc_student_time_to_first_token_seconds", "Time to first token", ["model"], registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30),
        )
        self.tokens_per_second = Histogram(
            "dsc_student_tokens_per_second", "Completion tokens per second of each completion", ["model"], registry=registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        )
        self.prompt_tokens = Counter("dsc_student_prompt_tokens", "Prompt tokens", ["model"], registry=registry)
        self.completion_tokens = Counter("dsc_student_completion_tokens", "Completion tokens (rate() = tokens/s)", ["model"], registry=registry)
        self.queue_depth = Gauge("dsc_student_queue_depth", "Sequences waiting for the engine", registry=registry)
        self.pending = Gauge("dsc_student_pending_sequences", "Sequences admitted and unfinished", registry=registry)
        self.batch_size = Histogram(
            "dsc_student_batch_size", "Sequences per batched generate (transformers path)", registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.active_model = Gauge("dsc_student_active_model", "1 for each model name served now", ["model", "kind"], registry=registry)
        self.rejected = Counter("dsc_student_rejected", "Completions refused before generation", ["reason"], registry=registry)
        self.swaps = Counter("dsc_student_swaps", "Routing-table switches to a newly loaded student", registry=registry)
        self.engine_deaths = Counter("dsc_student_engine_deaths", "Times the engine died under this process", registry=registry)
