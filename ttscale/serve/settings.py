"""ServeSettings: how `ttscale serve` runs, and which strategy option each of its limits bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ttscale.config import PluginSpec


class ServeSettings(PluginSpec):
    """How `ttscale serve` runs: the backend and its model, the default setting (strategy, options,
    verifier and sampling, for what a request leaves out; PluginSpec's fields), the policy and the limits."""

    strategy_options: dict[str, Any] = Field(default_factory=lambda: {"n": 1}, description="the default strategy's options")
    policy: Path | None = Field(None, description="a fitted allocation policy: a budget then picks the setting per prompt")
    max_tokens_limit: int = Field(1024, ge=1, description="the largest max_tokens a request may ask for")
    concurrency: int = Field(32, ge=1, description="problems solved at once; more requests wait their turn")
    max_choices: int = Field(64, ge=1, description="the largest client n")
    # Server-wide bounds on what one request may ask for, from any source (body, extra_body.ttscale,
    # headers, model prefix, policy): without them one request can hold the server for minutes.
    max_samples: int = Field(64, ge=1, description="the largest N (samples, particles, beams x width, budget_samples) per prompt")
    max_steps: int = Field(64, ge=1, description="the largest max_steps (or lookahead) of a step-wise search")
    max_prompts: int = Field(32, ge=1, description="the most prompts in one /v1/completions request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="the largest request body; a larger one gets 413 unread")
    api_key_env: str = Field("TTSCALE_API_KEY", description="environment variable holding the API key")


# Strategy options that multiply what one prompt costs, and the ServeSettings field bounding each.
LIMITED = {"n": "max_samples", "beam_width": "max_samples", "warmup": "max_samples", "batch": "max_samples",
           "history": "max_samples", "max_steps": "max_steps", "lookahead": "max_steps"}
FLAGS = {"max_samples": "--max-samples", "max_steps": "--max-steps"}
