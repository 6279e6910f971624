"""Steps and step-score aggregation, shared by every PRM and every PRM-guided strategy.

A step is a chunk of a solution ending in a blank line ("\\n\\n"), the convention of
search-and-learn and of the PRMs trained on PRM800K-style data.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

STEP_SEPARATOR = "\n\n"

Aggregation = Literal["last", "min", "prod", "mean"]


def split_steps(text: str) -> list[str]:
    """A solution's steps: its blank-line-separated chunks, empty chunks dropped."""
    return [step.strip() for step in text.split(STEP_SEPARATOR) if step.strip()]


def step_prefixes(text: str) -> list[str]:
    """The text up to the end of each of `split_steps(text)`'s steps and the separator after it,
    byte for byte as the model produced it (trailing spaces kept: "2. \\n\\n" stays "2. \\n\\n"); the
    last step's prefix is the whole text. A rollout from step i continues `step_prefixes(text)[i]`,
    which is a prefix of the text, as the stripped steps rejoined need not be."""
    prefixes, end = [], 0
    for chunk in text.split(STEP_SEPARATOR):
        end += len(chunk)
        if chunk.strip():
            prefixes.append(text[: end + len(STEP_SEPARATOR)])
        end += len(STEP_SEPARATOR)
    return prefixes


def aggregate(step_scores: Sequence[float], how: Aggregation) -> float:
    """One score from a PRM's step scores.

    last: the score of the final step (Snell et al.; search-and-learn's default);
    min: the weakest step (Lightman et al.); prod: the chance that every step is right
    (Puri et al.'s particle filtering); mean: the average step.
    An empty list (nothing scored yet) aggregates to 0.
    """
    if not step_scores:
        return 0.0
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "prod":
        return float(math.prod(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    raise ValueError(f"unknown aggregation {how!r}; use last, min, prod or mean")
