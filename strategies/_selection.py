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
    groups: list[list[str]] = []  # each group: equivalent answers, first one represents it
    for answer in (c.answer for c in candidates):
        if answer is None:
            continue
        group = next((g for g in groups if equivalent(g[0], answer)), None)
        if group is None:
            groups.append([answer])
        else:
            group.append(answer)
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal-length groups
