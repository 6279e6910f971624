"""Stopping rules for adaptive sampling: is the majority answer settled after these samples?

One implementation, shared by the `adaptive-consistency` strategy (which draws batches until a
rule says stop) and by the analysis layer (which replays a recorded best-of-N run: an adaptive
run is a prefix of it, so `stop_index` on the recorded answers says how many samples it draws).
Everything here is a pure function of the answer classes seen so far, in draw order, numbered
as `ttscale.selection.answer_classes` numbers them (-1: no answer).

Unanswered samples (`unanswered`): by default ("skip", ttscale's choice) a sample without an
answer counts toward no class, so a run never stops on, nor answers, "no answer". Both reference
implementations count it as an answer class of its own ("class"): Adaptive-Consistency counts
`Counter(answers)` whatever the answers are, None included (Pranjal2041/AdaptiveConsistency,
adaptive_consistency/stopping_criterias.py:28), and ESC gives an unparsable sample the answer
-1000 (Yiwei98/ESC, early_stop_gsm8k.py:136), which votes and can fill a window. With "class",
[a, a, None, None, None] gives the Beta rule P = 0.656 (None leads 3 to 2) where "skip" gives
0.875 (a alone, 2 samples), and the run's answer is the leading class, which may be no answer.

Rules (the posterior ones put a uniform prior on the answer distribution):

- beta (Aggarwal et al. 2023, "Let's Sample Step by Step", Adaptive-Consistency): with c1 and c2
  the counts of the two leading answers, the posterior of the leader's share among the two is
  Beta(c1 + 1, c2 + 1); stop when P(p1 > p2) = P(X > 1/2) = I_{1/2}(c2 + 1, c1 + 1) (the
  regularized incomplete beta function) reaches `threshold`.
- dirichlet (Aggarwal et al. 2023): the posterior over all answers seen is Dirichlet(counts + 1);
  stop when P(the leading answer has the largest probability) reaches `threshold`. No closed
  form in general; it is computed by deterministic numerical integration (scipy.integrate.quad)
  of its one-dimensional gamma form: with G_i ~ Gamma(alpha_i) independent, p = G / sum(G), so
  P(p_lead > p_j for all j) = integral_0^inf f_lead(x) * prod_{j != lead} F_j(x) dx.
  With two answers it equals the Beta rule; with one, an unseen second answer (count 0) stands
  for all others, so it also equals the Beta rule.
- esc (Li et al. 2024, "Escape Sky-high Cost: Early-stopping Self-Consistency"): samples fall
  into consecutive windows of `window` (default 5: the reference's `slice_`, Yiwei98/ESC,
  early_stop_gsm8k.py:98); stop once a whole window holds one answer (checked at window
  boundaries, as ESC does: windows [0, w), [w, 2w), ..., early_stop_gsm8k.py:127-143), and
  answer that window's answer; a run that never stops answers the majority of all its samples
  (early_stop_gsm8k.py:144-148). [b,b,c, b,b,d, a,a,a] with w = 3 answers a, not the majority b.

`min_samples` holds any rule off until that many samples are drawn. `give_up` (the issue's
measured variant) stops when the first m samples all disagree (a hard problem: more samples
rarely settle it); samples without an answer disagree with everything.

A batch of b samples is drawn at once, so a run can stop only at batch boundaries b, 2b, ...
(and at N): `stop_index` is the first boundary where `should_stop`, else all samples.
`StoppingRule.answer_position` is the sample whose answer the run gives.
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import integrate, special

StopReason = Literal["settled", "give-up"]
Unanswered = Literal["skip", "class"]


def counted_classes(classes: Sequence[int], unanswered: Unanswered = "skip") -> list[int]:
    """The classes the rules count: as given ("skip": -1 counts toward no class), or with every
    no-answer sample put in one class of its own, numbered after the answers ("class")."""
    classes = [int(c) for c in classes]
    if unanswered == "skip":
        return classes
    none = max(classes, default=-1) + 1
    return [none if c < 0 else c for c in classes]


def class_counts(classes: Sequence[int]) -> np.ndarray:
    """How many samples each answer class has (index = class id; no-answer samples left out)."""
    answered = np.asarray([c for c in classes if c >= 0], dtype=np.int64)
    return np.bincount(answered) if answered.size else np.zeros(0, dtype=np.int64)


def leading_class(classes: Sequence[int]) -> int:
    """The majority class (ties: the class seen first, as selection.py), or -1 when none answered."""
    counts = class_counts(classes)
    if not counts.size:
        return -1
    top = counts.max()
    return next(c for c in classes if c >= 0 and counts[c] == top)


def beta_posterior(classes: Sequence[int]) -> float:
    """P(p1 > p2) under Beta(c1 + 1, c2 + 1), c1 >= c2 the two leading counts (0.0: no answers)."""
    counts = np.sort(class_counts(classes))[::-1]
    if not counts.size:
        return 0.0
    c1, c2 = int(counts[0]), int(counts[1]) if counts.size > 1 else 0
    return float(special.betainc(c2 + 1, c1 + 1, 0.5))  # = 1 - I_{1/2}(c1 + 1, c2 + 1)


def dirichlet_posterior(classes: Sequence[int]) -> float:
    """P(the leading answer's probability is the largest) under Dirichlet(counts + 1) over the
    answers seen (0.0: no answers). With one answer seen, a second with count 0 stands for all
    others (else the posterior would be certain after one sample): Beta(c1 + 1, 1), as the beta rule."""
    counts = class_counts(classes)
    counts = counts[counts > 0]  # a class id with no sample here (numbered on other samples) is no answer seen
    if not counts.size:
        return 0.0
    return _lead_probability(tuple(sorted(counts.tolist(), reverse=True)))


@functools.lru_cache(maxsize=4096)
def _lead_probability(counts: tuple[int, ...]) -> float:
    """dirichlet_posterior for answer counts sorted high to low; depends on nothing else, so a
    replay over thousands of sample orders integrates each count pattern once."""
    alphas = np.asarray(counts, dtype=np.float64) + 1.0
    others = alphas[1:] if len(alphas) > 1 else np.ones(1)
    a, log_norm = alphas[0], special.gammaln(alphas[0])

    def integrand(x: float) -> float:  # Gamma(a) density times the others' CDFs (scipy.special: fast)
        if x <= 0.0:
            return 0.0
        return float(np.exp((a - 1.0) * np.log(x) - x - log_norm) * np.prod(special.gammainc(others, x)))

    # The integrand lives where Gamma(a) has its mass: split at its mode so quad sees it.
    mode = max(a - 1.0, 0.0)
    upper = float(special.gammaincinv(a, 1.0 - 1e-14))
    parts = [(0.0, mode), (mode, upper)] if mode > 0 else [(0.0, upper)]
    total = sum(integrate.quad(integrand, lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)[0] for lo, hi in parts)
    return float(min(max(total, 0.0), 1.0))


def esc_window_class(classes: Sequence[int], window: int) -> int | None:
    """The answer of the first complete window [i*w, (i+1)*w) that holds one answer (ESC), or
    None when no window does (a window of -1, no answer, holds none)."""
    for start in range(0, len(classes) - window + 1, window):
        chunk = classes[start : start + window]
        if chunk[0] >= 0 and all(c == chunk[0] for c in chunk):
            return int(chunk[0])
    return None


def esc_window_agrees(classes: Sequence[int], window: int) -> bool:
    """Whether some complete window [i*w, (i+1)*w) of the samples holds one answer (ESC)."""
    return esc_window_class(classes, window) is not None


def first_disagree(classes: Sequence[int], m: int) -> bool:
    """Whether the first m samples (all drawn) are m different answers (no answer: differs from all)."""
    if len(classes) < m:
        return False
    answered = [c for c in classes[:m] if c >= 0]
    return len(set(answered)) == len(answered)


class StoppingRule(BaseModel):
    """When adaptive sampling stops: a posterior (beta, dirichlet) over `threshold`, or ESC's window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["beta", "dirichlet", "esc"] = Field(
        default="beta", description="beta: the two leading answers' Beta posterior; dirichlet: all answers'; esc: a window of equal answers"
    )
    threshold: float = Field(
        default=0.95, gt=0.0, lt=1.0,
        description="beta/dirichlet: stop once P(the leading answer is the most likely) reaches this (e.g. 0.8, 0.95)",
    )
    window: int = Field(
        default=5, ge=1, description="esc: stop once a window of this many consecutive samples agrees (5: ESC's reference)"
    )
    min_samples: int = Field(default=1, ge=1, description="never stop before this many samples are drawn")
    give_up: int | None = Field(
        default=None, ge=2, description="m: also stop when the first m samples all disagree (None: never give up)"
    )
    unanswered: Unanswered = Field(
        default="skip",
        description="skip: a sample without an answer counts toward no class; class: it is a class of its own (both references)",
    )

    def posterior(self, classes: Sequence[int]) -> float | None:
        """The rule's posterior probability for these samples (None for esc, which has none)."""
        counted = counted_classes(classes, self.unanswered)
        if self.rule == "beta":
            return beta_posterior(counted)
        if self.rule == "dirichlet":
            return dirichlet_posterior(counted)
        return None

    def settled(self, classes: Sequence[int]) -> bool:
        """Whether the majority answer is settled after these samples (give-up not included)."""
        if len(classes) < self.min_samples:
            return False
        if self.rule == "esc":
            return esc_window_agrees(counted_classes(classes, self.unanswered), self.window)
        return self.posterior(classes) >= self.threshold

    def stop_reason(self, classes: Sequence[int]) -> StopReason | None:
        """Why a run holding these samples stops now ("settled", "give-up"), or None to go on."""
        if self.settled(classes):
            return "settled"
        counted = counted_classes(classes, self.unanswered)
        if self.give_up is not None and len(classes) >= self.min_samples and first_disagree(counted, self.give_up):
            return "give-up"
        return None

    def answer_position(self, classes: Sequence[int]) -> int:
        """The sample whose answer a run holding these samples gives (the first of its class), or
        -1 for no answer: ESC's unanimous window when the rule is esc and it settled, else the
        leading class (ties: the class seen first, as both references' Counter and sort keep it)."""
        counted = counted_classes(classes, self.unanswered)
        window = esc_window_class(counted, self.window) if self.rule == "esc" and self.settled(classes) else None
        answer = window if window is not None else leading_class(counted)
        if answer < 0 or classes[counted.index(answer)] < 0:  # no class, or the class of no answer
            return -1
        return counted.index(answer)

    def should_stop(self, classes: Sequence[int]) -> bool:
        """Whether a run holding these samples stops now (settled, or giving up)."""
        return self.stop_reason(classes) is not None


def batch_boundaries(total: int, batch: int) -> list[int]:
    """The sample counts at which a run drawing `batch` at a time can stop: b, 2b, ..., total."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    return [min(end, total) for end in range(batch, total + batch, batch)] if total else []


def stop_index(classes: Sequence[int], rule: StoppingRule, batch: int) -> int:
    """How many of the recorded samples (answer classes in draw order, all N of them) an adaptive
    run drawing `batch` at a time draws: the first batch boundary where `rule` stops, else all."""
    classes = [int(c) for c in classes]
    for end in batch_boundaries(len(classes), batch):
        if rule.should_stop(classes[:end]):
            return end
    return len(classes)


def default_batch(rule: StoppingRule) -> int:
    """The batch a rule is checked at by default: ESC's window for esc, else every sample."""
    return rule.window if rule.rule == "esc" else 1


__all__ = [
    "StoppingRule", "StopReason", "Unanswered", "batch_boundaries", "beta_posterior", "class_counts", "counted_classes",
    "default_batch", "dirichlet_posterior", "esc_window_agrees", "esc_window_class", "first_disagree", "leading_class",
    "stop_index",
]
