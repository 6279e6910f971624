"""Speculative decoding metrics and Leviathan et al.'s expected speedup.

Terms (vLLM's): a *draft* is one verification step that had proposed tokens; *drafted* tokens
are the tokens proposed; *accepted* tokens are those the target agreed with. Every step also
emits one token of the target's own (the "bonus" token), so

    acceptance rate α̂         = accepted / drafted
    mean acceptance length    = 1 + accepted / drafts        (tokens emitted per draft)

Leviathan et al. (2023, Thm 3.8): with per-token acceptance probability α, draft length γ and
c = (cost of one draft-model step) / (cost of one target step), the expected wall-time speedup is

    (1 - α^(γ+1)) / ((1 - α)(γc + 1)).

Their α assumes tokens are accepted independently. accepted/drafted underestimates it (tokens
after a rejection count as drafted but are never tried), so `alpha_from_acceptance_length` also
solves for the α whose expected tokens per draft, (1 - α^(γ+1)) / (1 - α), matches the
measured mean acceptance length.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def acceptance_rate(accepted: int, drafted: int) -> float | None:
    """accepted ÷ drafted tokens (None when nothing was drafted)."""
    return accepted / drafted if drafted else None


def mean_acceptance_length(accepted: int, drafts: int) -> float | None:
    """1 + accepted ÷ drafts: tokens emitted per verification step (None with no drafts)."""
    return 1.0 + accepted / drafts if drafts else None


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """Leviathan et al. eq. 1: E[tokens per step] = (1 - α^(γ+1)) / (1 - α); γ+1 at α = 1."""
    _check(alpha, gamma)
    if alpha == 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float = 0.0) -> float:
    """Leviathan et al.'s expected wall-time speedup (1 - α^(γ+1)) / ((1 - α)(γc + 1)).

    c is the draft step's cost relative to a target step: 0 for n-gram lookup, about
    draft params / target params for a draft model.
    """
    if c < 0:
        raise ValueError(f"c (draft/target cost ratio) must be >= 0, got {c}")
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + 1.0)


def alpha_from_acceptance_length(length: float, gamma: int) -> float:
    """The α at which Leviathan's expected tokens per step equals a measured mean acceptance length."""
    if not 1.0 <= length <= gamma + 1:
        raise ValueError(f"mean acceptance length must be within [1, {gamma + 1}] for γ = {gamma}, got {length}")
    if length == 1.0:
        return 0.0
    if length == gamma + 1:
        return 1.0
    from scipy.optimize import brentq  # imported here: scipy is slow to import, and rarely needed

    # expected_tokens_per_step increases strictly with α on [0, 1], so the root is unique.
    return brentq(lambda a: expected_tokens_per_step(a, gamma) - length, 0.0, 1.0 - 1e-12)


def speculative_metrics(drafts: int, drafted: int, accepted: int, emitted: int) -> dict[str, Any]:
    """The per-run record: token counts, acceptance rate and mean acceptance length."""
    return {
        "drafts": drafts,
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "emitted_tokens": emitted,
        "acceptance_rate": acceptance_rate(accepted, drafted),
        "mean_acceptance_length": mean_acceptance_length(accepted, drafts),
    }


def speculative_summary(cost: Mapping[str, Any]) -> dict[str, Any] | None:
    """Speculative metrics from a run's summed cost (None when nothing was drafted)."""
    drafted = int(cost.get("draft_tokens", 0))
    if not drafted:
        return None
    metrics = speculative_metrics(
        int(cost.get("drafts", 0)), drafted, int(cost.get("accepted_draft_tokens", 0)), int(cost.get("generated_tokens", 0))
    )
    metrics["draft_flops"] = float(cost.get("draft_flops", 0.0))
    return metrics


def compare_speedup(
    measured_speedup: float, *, accepted: int, drafted: int, drafts: int, gamma: int, c: float = 0.0
) -> dict[str, Any]:
    """Measured wall-time speedup next to Leviathan's expectation for the measured acceptance.

    Gives the expectation both for α = accepted/drafted and for the α implied by the mean
    acceptance length (see the module docstring); they differ when acceptance is bursty.
    """
    rate = acceptance_rate(accepted, drafted)
    length = mean_acceptance_length(accepted, drafts)
    implied = alpha_from_acceptance_length(min(length, gamma + 1.0), gamma) if length is not None else None
    return {
        "measured_speedup": measured_speedup,
        "acceptance_rate": rate,
        "mean_acceptance_length": length,
        "expected_speedup": expected_speedup(rate, gamma, c) if rate is not None else None,
        "alpha_from_length": implied,
        "expected_speedup_from_length": expected_speedup(implied, gamma, c) if implied is not None else None,
        "gamma": gamma,
        "c": c,
    }


def _check(alpha: float, gamma: int) -> None:
    if not (0.0 <= alpha <= 1.0) or math.isnan(alpha):
        raise ValueError(f"acceptance rate α must be within [0, 1], got {alpha}")
    if gamma < 1:
        raise ValueError(f"draft length γ must be >= 1, got {gamma}")
