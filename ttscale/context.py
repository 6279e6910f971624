"""SolveContext: everything a strategy may use for one problem, and nothing it may not."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from ttscale.types import SampleParams

if TYPE_CHECKING:
    from ttscale.cost import CostMeter
    from ttscale.protocols import AnswerTools


@dataclass
class SolveContext:
    """The metered backend, the answer tools, the sampling defaults and a per-problem seeded RNG.

    `params.seed` is already specific to this problem, so per-request seeds stay reproducible
    whatever order problems finish in.
    """

    backend: "CostMeter"
    answers: "AnswerTools"
    params: SampleParams
    rng: random.Random = field(default_factory=random.Random)
