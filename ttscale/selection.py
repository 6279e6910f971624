"""Selection rules: pick one answer from many candidates. The one implementation.

Strategies call the Candidate functions (`majority_vote`, `max_score`, ...) on their samples;
the analysis layer (ttscale.analysis.runs) calls `chosen_positions` on thousands of subsets of
recorded samples at once. DeepConf's confidence-filtered vote (`filtered_positions`,
`filtered_vote`) and confidence-weighted vote (`confidence_vote`: "weighted-vote" with trace
confidences as the scores) take the scores as an argument. Both go through `chosen_positions`, so a subsampled curve applies
exactly the rule a strategy applies. Shared conventions:

- candidates without an answer never win (and do not vote);
- ties go to the answer seen first (the earlier candidate), so no result depends on set order;
- equivalent answers are pooled with the benchmark's `equivalent(a, b)`: each candidate gets
  the class of the first earlier answer it is equivalent to (`answer_classes`).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

from ttscale.types import ORACLE_RULE, Candidate

# Rules that read verifier scores; whatever a gold-reading verifier scored is an upper bound.
VERIFIER_RULES = frozenset({"max-score", "weighted-vote", "borda-vote"})
# Rules that need gold answers to apply at all (the runner's "any candidate is correct").
GOLD_RULES = frozenset({ORACLE_RULE})
# Rules that read each candidate's execution on the problem's visible tests (ttscale.code_exec):
# deployable, as the tests are in the prompt.
CODE_RULES = frozenset({"pass-examples", "behaviour-vote"})
# Rules that read each candidate's run on model-written tests (ttscale.generated_tests): codet
# (CodeT's dual execution agreement) and test-vote (the most tests passed: CodeMonkeys' vote).
TEST_RULES = frozenset({"codet", "test-vote"})
# AlphaCode's clustering on the visible inputs plus the inputs of the model-written tests (their
# calls, whatever value each test expected): more inputs tell more programs apart.
GENERATED_BEHAVIOUR_RULE = "behaviour-vote-generated"
# CodeMonkeys' vote then a selection judge: a model call on the finalists, so not recomputable on
# a subset of the samples (ttscale.analysis.runs leaves it out of subsampled curves).
JUDGE_RULE = "test-vote-judge"
RULES = ("majority", "weighted-vote", "borda-vote", "max-score", "first", "random", *sorted(CODE_RULES),
         *sorted(TEST_RULES), GENERATED_BEHAVIOUR_RULE)  # what `chosen_positions` applies
BORDA_POWER = 0.5  # Kang et al.'s p: backprop07/Self-Certainty, src/voting_from_list.py, `--power` default (line 85)


def answer_classes(answers: Sequence[str | None], equivalent: Callable[[str, str], bool]) -> np.ndarray:
    """Each answer's equivalence class, numbered in order of first appearance (-1: no answer)."""
    representatives: list[str] = []
    classes = []
    for answer in answers:
        if answer is None:
            classes.append(-1)
            continue
        match = next((i for i, rep in enumerate(representatives) if rep == answer or equivalent(rep, answer)), None)
        if match is None:
            representatives.append(answer)
            match = len(representatives) - 1
        classes.append(match)
    return np.asarray(classes, dtype=np.int64)


def chosen_positions(rule: str, classes: np.ndarray, scores: np.ndarray, subsets: np.ndarray,
                     *, borda_power: float = BORDA_POWER, passed: np.ndarray | None = None,
                     behaviour: np.ndarray | None = None, rng: np.random.Generator | None = None,
                     test_passes: np.ndarray | None = None, test_counts: np.ndarray | None = None,
                     generated_behaviour: np.ndarray | None = None) -> np.ndarray:
    """For each subset (a row of candidate indices, in draw order), the index of the candidate
    whose answer `rule` picks, or -1 when it picks none.

    classes: each candidate's answer class (-1: no answer); scores: its verifier score (nan: none).
    majority, weighted-vote and borda-vote return the first candidate of the winning class.
    random: a uniform pick among the candidates with an answer (`rng`; default seeded 0).
    The code rules read each candidate's execution on the visible tests (ttscale.code_exec):
    `passed` (it passed them all) and `behaviour` (its output-signature class, -1: none).
    pass-examples: the first candidate that passed; behaviour-vote: the first candidate of the
    largest behaviour class (AlphaCode's clustering, MBR-exec); both fall back to `first`.
    behaviour-vote-generated: the same vote over `generated_behaviour`, each candidate's class by
    its outputs on the visible inputs and on the model-written tests' inputs.
    The test rules read `test_passes`, a (candidates x tests) bool matrix of each candidate on
    the model-written tests, each test weighted by `test_counts` (how often it was written).
    codet: candidates that pass the same set of tests form a consensus set, scored (candidates
    in it) x (tests it passes), as in CodeT's paper; the first candidate of the best set (ties:
    the set seen first). test-vote: the first candidate passing the most tests. Candidates that
    pass no test never win; both fall back to `first`.
    """
    subsets = np.asarray(subsets, dtype=np.int64)
    rows, k = subsets.shape
    if k == 0:
        return np.full(rows, -1)
    cls = classes[subsets]
    first = np.where(cls[:, 0] >= 0, subsets[:, 0], -1)
    if rule == "first":
        return first
    if rule == "random":
        keys = np.where(cls >= 0, (rng or np.random.default_rng(0)).random(cls.shape), -1.0)
        return np.where((cls >= 0).any(axis=1), subsets[np.arange(rows), keys.argmax(axis=1)], -1)
    if rule == GENERATED_BEHAVIOUR_RULE:
        if generated_behaviour is None:
            raise ValueError(f"rule {rule!r} reads each candidate's outputs on model-written tests' inputs, and none was recorded")
        return _behaviour_vote(cls, subsets, generated_behaviour, first)
    if rule in CODE_RULES:
        if passed is None or behaviour is None:
            raise ValueError(f"rule {rule!r} reads each candidate's run on the visible tests, and none was recorded")
        if rule == "pass-examples":
            ok = np.asarray(passed, dtype=bool)[subsets] & (cls >= 0)
            return np.where(ok.any(axis=1), subsets[np.arange(rows), ok.argmax(axis=1)], first)
        return _behaviour_vote(cls, subsets, behaviour, first)
    if rule in TEST_RULES:
        if test_passes is None:
            raise ValueError(f"rule {rule!r} reads each candidate's run on model-written tests, and none was recorded")
        picked = _test_positions(rule, cls, subsets, test_passes, test_counts)
        return np.where(picked >= 0, picked, first)
    if rule == "max-score":
        sc = scores[subsets]
        usable = (cls >= 0) & ~np.isnan(sc)
        best = np.where(usable, sc, -np.inf).argmax(axis=1)  # argmax keeps the first of equal maxima
        return np.where(usable.any(axis=1), subsets[np.arange(rows), best], -1)
    if rule not in ("majority", "weighted-vote", "borda-vote"):
        raise ValueError(f"unknown selection rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == "majority":
        weights = np.ones(cls.shape)
    elif rule == "borda-vote":
        weights = borda_weights(scores[subsets], borda_power)
    else:  # a candidate without a score adds 0 to its answer's total
        weights = np.nan_to_num(scores[subsets], nan=0.0)
    return _vote(cls, weights, subsets, num_classes=max(int(classes.max(initial=-1)) + 1, 1))


def _behaviour_vote(cls: np.ndarray, subsets: np.ndarray, behaviour: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The first candidate of each subset's largest behaviour class (fallback: `first`)."""
    behaviour = np.asarray(behaviour, dtype=np.int64)
    voted = _vote(np.where(cls >= 0, behaviour[subsets], -1), np.ones(cls.shape), subsets,
                  num_classes=max(int(behaviour.max(initial=-1)) + 1, 1))
    return np.where(voted >= 0, voted, first)


def tests_passed(test_passes: np.ndarray, test_counts: np.ndarray | None = None) -> np.ndarray:
    """Each candidate's number of model-written tests passed, a test counted as often as written."""
    passes = np.asarray(test_passes, dtype=bool)
    weights = np.ones(passes.shape[1]) if test_counts is None else np.asarray(test_counts, dtype=np.float64)
    return passes.astype(np.float64) @ weights


def consensus_sets(test_passes: np.ndarray) -> np.ndarray:
    """CodeT's consensus sets: each candidate's class by the exact set of tests it passes,
    numbered in order of first appearance (-1: it passes none, so it joins no set)."""
    passes = np.asarray(test_passes, dtype=bool)
    keys = ["".join("1" if p else "0" for p in row) if row.any() else None for row in passes]
    return answer_classes(keys, str.__eq__)


def _test_positions(rule: str, cls: np.ndarray, subsets: np.ndarray, test_passes: np.ndarray,
                    test_counts: np.ndarray | None) -> np.ndarray:
    """codet or test-vote on each subset (-1: no candidate with an answer passes a test)."""
    rows = subsets.shape[0]
    passed = tests_passed(test_passes, test_counts)
    usable = (cls >= 0) & (passed[subsets] > 0)
    if rule == "test-vote":
        votes = np.where(usable, passed[subsets], -1.0)
        return np.where(usable.any(axis=1), subsets[np.arange(rows), votes.argmax(axis=1)], -1)
    sets = consensus_sets(test_passes)
    # each member adds its set's test count, so a set's total is (members) x (tests passed)
    return _vote(np.where(usable, sets[subsets], -1), passed[subsets], subsets,
                 num_classes=max(int(sets.max(initial=-1)) + 1, 1))


def vote_finalists(candidates: Sequence[Candidate], test_passes: np.ndarray, test_counts: np.ndarray,
                   size: int) -> list[int]:
    """CodeMonkeys' finalists: the positions of up to `size` distinct programs that pass the most
    model-written tests (ties: the earlier sample), the first sample of each program."""
    passed = tests_passed(test_passes, test_counts)
    classes = answer_classes([c.answer for c in candidates], str.__eq__)
    firsts = [i for i, c in enumerate(classes) if c >= 0 and c not in classes[:i]]
    return sorted(firsts, key=lambda i: (-passed[i], i))[:size]


def tests_pick(rule: str, candidates: Sequence[Candidate], test_passes: np.ndarray, test_counts: np.ndarray) -> str | None:
    """A test rule (TEST_RULES) on candidates, from their runs on the model-written tests."""
    if not candidates:
        return None
    classes = answer_classes([c.answer for c in candidates], str.__eq__)
    position = int(chosen_positions(rule, classes, np.full(len(candidates), np.nan), np.arange(len(candidates))[None, :],
                                    test_passes=test_passes, test_counts=test_counts)[0])
    return candidates[position].answer if position >= 0 else None


def borda_weights(scores: np.ndarray, power: float = BORDA_POWER) -> np.ndarray:
    """Kang et al.'s Borda vote weights, per row of scores (rows, k): the candidate ranked r-th
    (0-based, highest score first) gets (k - r)^power. Ties keep draw order (a stable sort, as the
    reference's `sorted(..., reverse=True)`); a candidate without a score (nan) ranks after every
    scored one. A candidate without an answer keeps its rank but votes for nothing (class -1).
    backprop07/Self-Certainty, src/voting_from_list.py lines 37-71."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    rows, k = scores.shape
    order = np.argsort(-np.where(np.isnan(scores), -np.inf, scores), axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(rows)[:, None], order] = np.arange(k)[None, :]
    return (k - ranks).astype(np.float64) ** power


def _vote(cls: np.ndarray, weights: np.ndarray, subsets: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Per row, the first candidate of the class with the largest total weight (ties: the class
    seen first); class -1 never wins; -1 when a row has no class at all."""
    rows, k = subsets.shape
    onehot = cls[:, :, None] == np.arange(num_classes)[None, None, :]  # (rows, k, classes)
    present = onehot.any(axis=1)
    first_pos = np.where(present, onehot.argmax(axis=1), k)  # where each class first appears
    weight = (onehot * weights[:, :, None]).sum(axis=1)
    weight = np.where(present, weight, -np.inf)
    top = present & (weight == weight.max(axis=1, keepdims=True))
    winner = np.where(top, first_pos, k).min(axis=1)  # of the tied classes, the one seen first
    picked = subsets[np.arange(rows), np.minimum(winner, k - 1)]
    return np.where(present.any(axis=1), picked, -1)


def filtered_positions(classes: np.ndarray, scores: np.ndarray, subsets: np.ndarray, keep: float,
                       *, weighted: bool = True) -> np.ndarray:
    """DeepConf's confidence filtering on arrays, as `chosen_positions`: in each subset, keep the
    candidates whose score is at least the subset's (100 - keep)-th percentile (numpy's linear
    interpolation, over the candidates that have an answer and a score, as Fu et al.'s code),
    then vote among them, each weighted by its score (`weighted`, the paper's DeepConf@N) or
    counted once. `keep` is eta, the percent kept (10: DeepConf-low, 90: DeepConf-high).

    scores: a trace score per candidate (ttscale.confidence.trace_score; nan: none). Confidence
    scores are read from the sample itself: no verifier, no gold.
    """
    subsets = np.asarray(subsets, dtype=np.int64)
    rows, k = subsets.shape
    if k == 0:
        return np.full(rows, -1)
    cls = classes[subsets]
    sc = np.asarray(scores, dtype=np.float64)[subsets]
    usable = (cls >= 0) & ~np.isnan(sc)
    masked = np.where(usable, sc, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with nothing usable: nan, keeps none
        cut = np.nanpercentile(masked, 100.0 - keep, axis=1, keepdims=True)
    kept = usable & (masked >= cut)
    weights = np.where(kept, sc, 0.0) if weighted else kept.astype(np.float64)
    return _vote(np.where(kept, cls, -1), weights, subsets, num_classes=max(int(classes.max(initial=-1)) + 1, 1))


def _pick(rule: str, candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]) -> str | None:
    if not candidates:
        return None
    classes = answer_classes([c.answer for c in candidates], equivalent)
    scores = np.asarray([np.nan if c.score is None else float(c.score) for c in candidates])
    position = int(chosen_positions(rule, classes, scores, np.arange(len(candidates))[None, :])[0])
    return candidates[position].answer if position >= 0 else None


def execution_pick(rule: str, candidates: Sequence[Candidate], passed: np.ndarray | None = None,
                   behaviour: np.ndarray | None = None, **arrays: np.ndarray) -> str | None:
    """A code rule (CODE_RULES, or behaviour-vote-generated given `generated_behaviour`) on
    candidates, from their runs."""
    if not candidates:
        return None
    classes = answer_classes([c.answer for c in candidates], str.__eq__)
    position = int(chosen_positions(rule, classes, np.full(len(candidates), np.nan), np.arange(len(candidates))[None, :],
                                    passed=passed, behaviour=behaviour, **arrays)[0])
    return candidates[position].answer if position >= 0 else None


def code_selections(candidates: Sequence[Candidate], passed: np.ndarray, behaviour: np.ndarray,
                    equivalent: Callable[[str, str], bool], rng: np.random.Generator) -> dict[str, str | None]:
    """Every verifier-free rule over code candidates: majority, first, random and the code rules
    (CODE_RULES, from their runs on the visible tests), as a strategy's trace records them."""
    return {
        "majority": majority_vote(candidates, equivalent),
        "first": first_answer(candidates),
        "random": random_answer(candidates, rng),
        **{rule: execution_pick(rule, candidates, passed, behaviour) for rule in sorted(CODE_RULES)},
    }


def random_answer(candidates: Sequence[Candidate], rng: np.random.Generator) -> str | None:
    """The answer of a candidate drawn uniformly among those with one (the baseline of code rules)."""
    if not candidates:
        return None
    classes = answer_classes([c.answer for c in candidates], str.__eq__)
    position = int(chosen_positions("random", classes, np.full(len(candidates), np.nan),
                                    np.arange(len(candidates))[None, :], rng=rng)[0])
    return candidates[position].answer if position >= 0 else None


def first_answer(candidates: Sequence[Candidate]) -> str | None:
    """The first sample's answer: what a single sample would have given."""
    return candidates[0].answer if candidates else None


def majority_vote(candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]) -> str | None:
    """Self-consistency (Wang et al.): the most frequent answer, equivalent answers pooled."""
    return _pick("majority", candidates, equivalent)


def max_score(candidates: Sequence[Candidate]) -> str | None:
    """ORM/PRM max ("best-of-N" in the verifier sense): the answer of the best-scored candidate."""
    return _pick("max-score", candidates, str.__eq__)


def weighted_vote(candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]) -> str | None:
    """Verifier-weighted majority vote (Snell et al. "best-of-N weighted"; search-and-learn
    "weighted"): sum the scores of the candidates per equivalent answer, pick the largest sum."""
    return _pick("weighted-vote", candidates, equivalent)


def answer_groups(candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]) -> list[list[Candidate]]:
    """Candidates grouped by equivalent answer, groups in order of first appearance."""
    classes = answer_classes([c.answer for c in candidates], equivalent)
    groups: list[list[Candidate]] = [[] for _ in range(int(classes.max(initial=-1)) + 1)]
    for candidate, cls in zip(candidates, classes):
        if cls >= 0:
            groups[cls].append(candidate)
    return groups


def confidence_vote(candidates: Sequence[Candidate], scores: Sequence[float],
                    equivalent: Callable[[str, str], bool]) -> str | None:
    """Confidence-weighted majority vote (DeepConf): sum each answer's candidates' `scores`
    (trace confidences read from the samples themselves, not a verifier's), pick the largest."""
    return _pick_scored(candidates, scores, equivalent, keep=None)


def filtered_vote(candidates: Sequence[Candidate], scores: Sequence[float],
                  equivalent: Callable[[str, str], bool], keep: float) -> str | None:
    """DeepConf's confidence-filtered vote: keep the top `keep`% of candidates by `scores`, then
    the confidence-weighted vote among them (`filtered_positions`)."""
    return _pick_scored(candidates, scores, equivalent, keep=keep)


def _pick_scored(candidates, scores, equivalent, *, keep: float | None) -> str | None:
    if not candidates:
        return None
    classes = answer_classes([c.answer for c in candidates], equivalent)
    values = np.asarray([np.nan if s is None else float(s) for s in scores], dtype=np.float64)
    subsets = np.arange(len(candidates))[None, :]
    if keep is None:
        position = int(chosen_positions("weighted-vote", classes, values, subsets)[0])
    else:
        position = int(filtered_positions(classes, values, subsets, keep)[0])
    return candidates[position].answer if position >= 0 else None
