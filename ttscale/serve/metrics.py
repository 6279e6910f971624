"""The server's Prometheus metrics: requests by route and status, the latency histogram, and
what the requests spent (tokens, FLOPs, engine calls), from each problem's cost."""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Counters and a latency histogram, written as Prometheus text (no global registry:
    vLLM keeps its own in the same process)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.totals = dict.fromkeys(("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "verifier_tokens",
                                     "flops", "eflops", "engine_calls", "uncounted_calls"), 0.0)
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.in_flight = 0

    def observe(self, route: str, status: int | str, seconds: float) -> None:
        """One finished request: its HTTP status, or "cancelled" where the client disconnected first."""
        key = (route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def add_cost(self, cost: Any) -> None:
        """What a solved problem spent."""
        self.totals["prompt_tokens"] += cost.prompt_tokens
        self.totals["cached_prompt_tokens"] += cost.cached_prompt_tokens
        self.totals["completion_tokens"] += cost.generated_tokens
        self.totals["verifier_tokens"] += cost.verifier_tokens
        self.totals["flops"] += cost.flops
        self.totals["eflops"] += cost.eflops
        self.totals["engine_calls"] += cost.calls + cost.verifier_calls
        self.totals["uncounted_calls"] += cost.uncounted_calls

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines = ["# HELP ttscale_requests_total Requests answered, by route and HTTP status (\"cancelled\": the client left first).",
                 "# TYPE ttscale_requests_total counter"]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'ttscale_requests_total{{route="{route}",status="{status}"}} {count}')
        help_text = {
            "prompt_tokens": "Prompt tokens sent to the engine (probe included).",
            "cached_prompt_tokens": "Prompt tokens the engine's prefix cache served.",
            "completion_tokens": "Tokens generated, every candidate included.",
            "verifier_tokens": "Tokens a verifier model read or wrote.",
            "flops": "FLOPs spent (generation, verifier, draft), from the CostMeter.",
            "eflops": "eFLOPs (Kinetics) spent, from the CostMeter.",
            "engine_calls": "Calls to the engine (generator and verifier).",
            "uncounted_calls": "Engine calls whose tokens nobody could count.",
        }
        for name, value in self.totals.items():
            lines += [f"# HELP ttscale_{name}_total {help_text[name]}", f"# TYPE ttscale_{name}_total counter",
                      f"ttscale_{name}_total {value:.17g}"]
        lines += ["# HELP ttscale_requests_in_flight Requests being served now.", "# TYPE ttscale_requests_in_flight gauge",
                  f"ttscale_requests_in_flight {self.in_flight}",
                  "# HELP ttscale_request_latency_seconds Time from request to full response.",
                  "# TYPE ttscale_request_latency_seconds histogram"]
        for bound, count in zip(LATENCY_BUCKETS, self.buckets):
            lines.append(f'ttscale_request_latency_seconds_bucket{{le="{bound}"}} {count}')
        lines += [f'ttscale_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                  f"ttscale_request_latency_seconds_sum {self.latency_sum:.6f}",
                  f"ttscale_request_latency_seconds_count {self.latency_count}"]
        return "\n".join(lines) + "\n"
