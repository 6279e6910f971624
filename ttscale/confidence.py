"""How sure a sample was of its own tokens, read from its logprobs: no verifier, no gold.

DeepConf (Fu et al. 2025) calls a token's confidence the negative mean log-probability of the
top-k candidates at that position,

    C_i = -(1/k) * sum_{j<=k} log P_i(j),

high where the distribution is peaked (the model was sure) and low where it was flat. Strategies
record C_i for every generated token (`token_confidences`), so DeepConf's group and trace scores,
its online stop rule and self-certainty can all be replayed from a recorded run.

Self-certainty (Kang et al. 2025) is the mean KL divergence of the token distribution from
uniform. Over the top-k alone (all the engine returns) it is the same quantity up to a constant:
mean_j(-log(k * P_i(j))) = C_i - log k.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ttscale.types import Completion

CONFIDENCE_DECIMALS = 4  # recorded precision: plenty for thresholds, and samples.jsonl stays small


def token_confidence(alternatives: Mapping[str, float], k: int) -> float:
    """C_i from one position's {token: logprob}; the k most likely are read (the engine also
    returns the sampled token, which may fall outside its top-k)."""
    top = sorted(alternatives.values(), reverse=True)[:k]
    if not top:
        return 0.0
    return -sum(top) / len(top)


def token_confidences(completion: Completion, k: int) -> tuple[float, ...] | None:
    """C_i for every generated token of `completion`, or None when it carries no logprobs."""
    if completion.top_logprobs is None:
        return None
    return tuple(round(token_confidence(position, k), CONFIDENCE_DECIMALS) for position in completion.top_logprobs)


def mean_logprob(completion: Completion) -> float | None:
    """The sample's mean log-probability per generated token (None when the engine gave none)."""
    if completion.cumulative_logprob is None or completion.num_tokens == 0:
        return None
    return completion.cumulative_logprob / completion.num_tokens


def self_certainty(confidences: Sequence[float], k: int) -> float:
    """Kang et al.'s self-certainty over the top-k: the mean of C_i - log k."""
    if not confidences:
        return 0.0
    return sum(confidences) / len(confidences) - math.log(k)
