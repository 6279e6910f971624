"""Selection rules shared by strategies: pick one answer from many candidates."""

from __future__ import annotations

from typing import Callable, Sequence

from ttscale.types import Candidate


def first_answer(candidates: Sequence[Candidate]) -> str | None:
    """The first sample's answer: what a single sample would have given."""
    return candidates[0].answer if candidates else None


def majority_vote(
    candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]
) -> str | None:
    """Self-consistency (Wang et al.): the most frequent answer, equivalent answers pooled.

    Ties go to the answer seen first, so the result does not depend on set ordering.
    Candidates with no extractable answer do not vote.
    """
    groups = answer_groups(candidates, equivalent)
    if not groups:
        return None
    return max(groups, key=len)[0].answer  # max keeps the first of equal-length groups


def answer_groups(
    candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]
) -> list[list[Candidate]]:
    """Candidates grouped by equivalent answer, groups in order of first appearance."""
    groups: list[list[Candidate]] = []
    for candidate in candidates:
        if candidate.answer is None:
            continue
        group = next((g for g in groups if equivalent(g[0].answer, candidate.answer)), None)
        if group is None:
            groups.append([candidate])
        else:
            group.append(candidate)
    return groups


def max_score(candidates: Sequence[Candidate]) -> str | None:
    """ORM/PRM max ("best-of-N" in the verifier sense): the answer of the best-scored candidate.

    Candidates without an answer are skipped; ties go to the earlier candidate.
    """
    scored = [c for c in candidates if c.answer is not None and c.score is not None]
    if not scored:
        return None
    return max(scored, key=lambda c: c.score).answer


def weighted_vote(
    candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool]
) -> str | None:
    """Verifier-weighted majority vote (Snell et al. "best-of-N weighted"; search-and-learn
    "weighted"): sum the scores of the candidates per equivalent answer, pick the largest sum.
    """
    groups = answer_groups(candidates, equivalent)
    if not groups:
        return None
    totals = [sum(c.score or 0.0 for c in group) for group in groups]
    best = max(range(len(groups)), key=lambda i: totals[i])  # first of equal totals
    return groups[best][0].answer
