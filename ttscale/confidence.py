"""How sure a sample was of its own tokens, read from its logprobs: no verifier, no gold.

DeepConf (Fu et al. 2025) calls a token's confidence the negative mean log-probability of the
top-k candidates at that position,

    C_i = -(1/k) * sum_{j<=k} log P_i(j),

high where the distribution is peaked (the model was sure) and low where it was flat. Strategies
record C_i for every generated token (`token_confidences`), so DeepConf's group and trace scores,
its online stop rule and the top-k certainty can all be replayed from a recorded run.

`topk_certainty` is C_i - log k averaged over the tokens: the KL divergence from uniform of the
top-k alone. It is NOT Kang et al.'s self-certainty, which reads the full vocabulary (V = 49,152
for SmolLM2; ttscale.self_certainty, the `self-certainty` verifier): the two can order samples
oppositely. Being the mean C_i minus a constant, it ranks samples exactly as deepconf-mean does.

What replays of recorded runs call (pure functions of a trace's recorded C_i): `group_confidences`,
`lowest_group_confidence`, `bottom_group_confidence`, `tail_confidence`, `mean_confidence`,
`trace_score`; for DeepConf online, `online_threshold`, `stop_position` and `online_replay` (the
whole online run). `GroupConfidenceStop` is the same stop rule fed token by token by a streaming
backend, bit-identical to `stop_position`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ttscale.selection import chosen_positions
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


def topk_certainty(confidences: Sequence[float], k: int) -> float:
    """The top-k proxy of self-certainty: the mean of C_i - log k (>= 0). It ranks samples as
    deepconf-mean does (the same mean, less a constant); Kang et al.'s self-certainty reads the
    full vocabulary (ttscale.self_certainty) and can rank them the other way."""
    if not confidences:
        return 0.0
    return sum(confidences) / len(confidences) - math.log(k)


# --- DeepConf: group confidence, trace scores, the online stop ------------------------------------
#
# Group confidence is the mean of C_i over a sliding window of `window` tokens (Fu et al. 2025,
# eq. 3; their released code's `compute_least_grouped`): every full window's mean, or, for a trace
# shorter than one window, the mean of all its tokens. The paper's window is 2048 tokens, for
# reasoning traces of thousands; DEFAULT_WINDOW suits answers of about a hundred tokens.
#
# Exactness: confidences are recorded to CONFIDENCE_DECIMALS places, so sums are taken in integer
# units of 10^-decimals. A window's mean is then one correctly rounded division, whatever order
# its terms arrive in: the streaming stop (token by token, in the backend) and a replay over the
# recorded confidences (sliding sums) compute bit-identical group confidences, so a replay stops
# a trace exactly where the engine stopped it.

DEFAULT_WINDOW = 16  # tokens per group: a few groups in a ~100-token answer (paper: 2048 for long traces)
# Tokens the tail score reads. The reference sets it apart from the group window
# (facebookresearch/deepconf deepconf/utils.py:104, calculate_tail_confidence(tail_tokens=2048);
# the window is wrapper.py:80, window_size=2048): both 2048 there, both scaled to 16 here.
DEFAULT_TAIL = 16
CONFIDENCE_SCALE = 10**CONFIDENCE_DECIMALS
TRACE_SCORES = ("lowest-group", "bottom-10", "tail", "mean")


def confidence_unit(confidence: float) -> int:
    """A recorded confidence in integer units of 10^-CONFIDENCE_DECIMALS (exact for recorded values)."""
    return int(round(confidence * CONFIDENCE_SCALE))


def _units(confidences: Sequence[float]) -> np.ndarray:
    return np.asarray([confidence_unit(c) for c in confidences], dtype=np.int64)


def group_confidences(confidences: Sequence[float], window: int = DEFAULT_WINDOW) -> np.ndarray:
    """The mean confidence of every full window of `window` consecutive tokens, in order; a trace
    shorter than one window has one group, all its tokens; a trace with no tokens has none."""
    units = _units(confidences)
    if not units.size:
        return np.zeros(0)
    if units.size < window:
        return np.asarray([int(units.sum()) / (units.size * CONFIDENCE_SCALE)])
    sums = np.cumsum(np.concatenate([[0], units]))
    return (sums[window:] - sums[:-window]) / (window * CONFIDENCE_SCALE)


def lowest_group_confidence(confidences: Sequence[float], window: int = DEFAULT_WINDOW) -> float:
    """DeepConf's lowest group confidence: the least confident window (0.0 for an empty trace)."""
    groups = group_confidences(confidences, window)
    return float(groups.min()) if groups.size else 0.0


def bottom_group_confidence(confidences: Sequence[float], window: int = DEFAULT_WINDOW, percent: float = 10.0) -> float:
    """DeepConf's bottom-10% group confidence: the mean of the lowest `percent`% of the groups
    (at least one), as their released code takes it (0.0 for an empty trace)."""
    groups = np.sort(group_confidences(confidences, window))
    if not groups.size:
        return 0.0
    return float(groups[: max(1, int(groups.size * percent / 100.0))].mean())


def tail_confidence(confidences: Sequence[float], tail: int = DEFAULT_TAIL) -> float:
    """DeepConf's tail confidence: the mean over the last `tail` tokens (all, if fewer)."""
    units = _units(confidences)[-tail:]
    return int(units.sum()) / (units.size * CONFIDENCE_SCALE) if units.size else 0.0


def mean_confidence(confidences: Sequence[float]) -> float:
    """The mean token confidence over the whole trace (0.0 for an empty trace)."""
    units = _units(confidences)
    return int(units.sum()) / (units.size * CONFIDENCE_SCALE) if units.size else 0.0


def trace_score(confidences: Sequence[float], kind: str, window: int = DEFAULT_WINDOW, tail: int = DEFAULT_TAIL) -> float:
    """One of DeepConf's trace scores by name (TRACE_SCORES); higher is more confident. `window`
    is the group size (lowest-group, bottom-10), `tail` the tail score's length, set apart."""
    if kind == "lowest-group":
        return lowest_group_confidence(confidences, window)
    if kind == "bottom-10":
        return bottom_group_confidence(confidences, window, 10.0)
    if kind == "tail":
        return tail_confidence(confidences, tail)
    if kind == "mean":
        return mean_confidence(confidences)
    raise ValueError(f"unknown trace score {kind!r}; use one of {', '.join(TRACE_SCORES)}")


def stop_position(confidences: Sequence[float], window: int, threshold: float) -> int | None:
    """Where DeepConf online stops a trace: the number of tokens generated when the first full
    window's group confidence falls below `threshold` (None: it never does, the trace finishes).
    A trace is checked once it holds a full window, as the paper's engine patch checks it."""
    if len(confidences) < window:
        return None
    below = np.flatnonzero(group_confidences(confidences, window) < threshold)
    return int(below[0]) + window if below.size else None


def online_threshold(lowest_groups: Sequence[float], eta: float) -> float:
    """DeepConf online's stop threshold s from the warm-up traces' lowest group confidences: the
    (100 - eta)-th percentile (numpy's linear interpolation, as their code, wrapper.py:208), so
    eta% of the warm-up traces pass (DeepConf-low: eta=10; DeepConf-high: eta=90). With one
    warm-up trace s is that trace's score whatever eta is: eta acts from two traces on."""
    return float(np.percentile(np.asarray(lowest_groups, dtype=np.float64), 100.0 - eta))


class GroupConfidenceStop:
    """The online stop rule, fed one token at a time as the engine streams it: True once the last
    `window` tokens' group confidence is below `threshold` (bit-identical to `stop_position`)."""

    def __init__(self, *, k: int, window: int, threshold: float):
        self.k, self.window, self.threshold = k, window, threshold
        self._units: list[int] = []
        self._sum = 0

    def __call__(self, alternatives: Mapping[str, float]) -> bool:
        """Take the next token's {token: logprob}; True: stop the trace after this token."""
        unit = confidence_unit(round(token_confidence(alternatives, self.k), CONFIDENCE_DECIMALS))
        self._units.append(unit)
        self._sum += unit
        if len(self._units) > self.window:
            self._sum -= self._units[-self.window - 1]
        if len(self._units) < self.window:
            return False
        return self._sum / (self.window * CONFIDENCE_SCALE) < self.threshold


def vote_share(classes: Sequence[int], weights: Sequence[float]) -> float:
    """The weighted share of the leading answer among voting traces (class -1 does not vote):
    DeepConf online's consensus beta = V(a_hat) / sum_a V(a); 0.0 with no votes."""
    totals: dict[int, float] = {}
    for cls, weight in zip(classes, weights):
        if cls >= 0:
            totals[cls] = totals.get(cls, 0.0) + float(weight)
    total = math.fsum(totals.values())
    return max(totals.values()) / total if totals and total > 0 else 0.0


@dataclass(frozen=True)
class OnlineReplay:
    """What DeepConf online does with a problem's traces, replayed from their full confidences."""

    threshold: float
    """s: the stop threshold the warm-up set."""
    drawn: int
    """Traces drawn (warm-up included)."""
    stopped_at: tuple[int | None, ...]
    """Per drawn trace: tokens generated when it was stopped, or None (finished; warm-up never stops)."""
    votes: tuple[bool, ...]
    """Per drawn trace: whether it votes (not stopped, and its lowest group confidence >= s)."""
    weights: tuple[float, ...]
    """Per drawn trace: its lowest group confidence over what it generated (the vote's weight)."""
    tokens: tuple[int, ...]
    """Per drawn trace: tokens generated (the stop position for stopped traces)."""
    winner: int
    """The drawn trace whose answer the confidence-weighted vote picks, or -1."""
    stop_reason: str
    """"consensus" (the weighted share reached tau) or "budget" (N drawn)."""


def online_replay(
    confidences: Sequence[Sequence[float]],
    classes: Sequence[int],
    *,
    n: int,
    warmup: int,
    eta: float,
    window: int = DEFAULT_WINDOW,
    consensus: float = 0.95,
    batch: int = 1,
) -> OnlineReplay:
    """DeepConf online (Fu et al. 2025, Algorithm 2) replayed over recorded full traces, in draw
    order (a best-of-N run's samples: the same seeds as the online run's). `classes` are the full
    traces' answer classes (selection.answer_classes; a stopped trace's never counts).

    Warm-up traces 0..warmup-1 run in full and set s; later traces come in batches of `batch`,
    each stopped at `stop_position`; after each batch, sampling ends once the voting traces'
    weighted share of the leading answer reaches `consensus`, or at N."""
    n = min(n, len(confidences))
    first = min(warmup, n)
    weights = [lowest_group_confidence(c, window) for c in confidences[:first]]
    threshold = online_threshold(weights, eta) if weights else 0.0
    stopped: list[int | None] = [None] * first
    tokens = [len(c) for c in confidences[:first]]
    drawn, reason = first, "budget"
    while drawn < n:
        end = min(drawn + batch, n)
        for trace in confidences[drawn:end]:
            position = stop_position(trace, window, threshold)
            stopped.append(position)
            kept = trace[:position] if position is not None else trace
            tokens.append(len(kept))
            weights.append(lowest_group_confidence(kept, window))
        drawn = end
        votes = [s is None and w >= threshold for s, w in zip(stopped, weights)]
        if vote_share([c if v else -1 for c, v in zip(classes, votes)], weights) >= consensus:
            reason = "consensus"
            break
    votes = [s is None and w >= threshold for s, w in zip(stopped, weights)]
    voting = np.asarray([int(c) if v else -1 for c, v in zip(classes, votes)], dtype=np.int64)
    winner = int(chosen_positions("weighted-vote", voting, np.asarray(weights), np.arange(drawn)[None, :])[0]) if drawn else -1
    return OnlineReplay(threshold, drawn, tuple(stopped), tuple(votes), tuple(weights), tuple(tokens), winner, reason)
