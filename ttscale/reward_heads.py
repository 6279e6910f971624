"""Reward heads on the policy model's own hidden states: what a trained verifier reads and computes.

A solution is scored the way search strategies see it: its steps (ttscale.steps) joined by blank
lines, read after the prompt as the assistant's turn. The policy model reads that text once and
the final hidden state at the last token of each step is that step's feature vector
(ttscale.hidden_states.step_features, which also holds the engine and the feature cache). A
decoder attends causally, so a step's vector depends only on the prompt and the steps up to it:
scores of a prefix can be reused when a search asks again.

A head is a linear map on standardized features, stored as plain numbers in head.json (a server
loads it with numpy and never unpickles anything):
- ORM (label "grade"): logistic, P(the solution is graded correct), from its last step's vector;
- PRM, Math-Shepherd (label "math-shepherd"): logistic on the soft label Q = the fraction of
  rollouts from the step's prefix that reach the gold answer (Wang et al. 2024);
- PRM, PAV (label "pav", Setlur et al. 2024): the value head above (Q^pi, the policy's) plus a
  ridge head on the step's advantage under a prover mu, A^mu = Q^mu(after) - Q^mu(before); a step
  scores Q^pi + alpha * A^mu. The prover is Best-of-K of the policy (`prover="best-of-k"`), or the
  policy itself (`prover="policy"`, K = 1: the "Q-difference" label, which ranks the children of
  one parent exactly as Q does). See ttscale.verifier_training for the labels and the paper's values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttscale.errors import ConfigError
from ttscale.hidden_states import STEP_FEATURES, LinearModel

HEAD_FILE = "head.json"
Kind = Literal["orm", "prm"]
Label = Literal["grade", "math-shepherd", "pav"]
Prover = Literal["best-of-k", "policy"]  # PAV's prover mu: Best-of-K of the policy, or the policy itself


class LinearHead(LinearModel):
    """link((x - feature_mean) / feature_scale · coef + intercept), with link logistic or identity."""

    link: Literal["logistic", "identity"]
    penalty: float = Field(description="the regularization chosen by cross-validation (logistic C, ridge alpha)")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """One output per row of x (rows x d)."""
        z = self.linear(x)
        return 1.0 / (1.0 + np.exp(-z)) if self.link == "logistic" else z


class Provenance(BaseModel):
    """What a head was trained on: enough to check that no held-out problem reached it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runs: list[str] = Field(description="the run directories read")
    split_rule: str = Field(description="how problems are split: ttscale.problems.split_of")
    trained_on_split: Literal["a"] = "a"
    fit_problems: list[str] = Field(description="every problem id whose samples were used (all in half a)")
    examples: int
    positives: float = Field(description="the sum of the labels (soft labels count fractionally)")
    data_sha256: str = Field(description="sha256 of the training data: problem ids, texts, labels")
    rollouts: dict[str, float] = Field(default_factory=dict, description="PRM: rollouts per prefix, prefixes, and their cost")
    cv: dict[str, float] = Field(default_factory=dict, description="cross-validated figures on the fitting half, by problem folds")


class RewardHead(BaseModel):
    """A trained verifier as head.json: which model's features it reads, and its linear heads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: Kind
    label: Label
    model: str = Field(description="the policy model's name (its hidden states are the features)")
    model_path: str = Field(description="what the pooling engine loads: the run's --model")
    backend: Literal["vllm", "fake"] = Field(description="the hidden-state backend: vLLM's pooling runner, or the fake one (tests)")
    features: str = STEP_FEATURES
    value: LinearHead
    advantage: LinearHead | None = None
    alpha: float = Field(default=1.0, description="PAV: weight of the advantage in a step's score")
    prover: Prover | None = Field(default=None, description="PAV: the prover whose advantage the advantage head learned "
                                  "(absent on PAV heads trained before there was a choice: those used the policy)")
    prover_k: int | None = Field(default=None, ge=1, description="PAV: K of a Best-of-K prover (1: the policy)")
    provenance: Provenance

    @property
    def description(self) -> str:
        """What the head scores, as tables name it: e.g. "prm (pav, prover = Best-of-4 of the policy)"."""
        if self.label != "pav":
            return f"{self.kind} ({self.label})"
        if self.prover == "best-of-k":
            return f"{self.kind} (pav, prover = Best-of-{self.prover_k} of the policy)"
        return f"{self.kind} (Q-difference, prover = policy)"

    def step_scores(self, features: np.ndarray) -> list[float]:
        """A score per step vector: the value (ORM, Math-Shepherd), or value + alpha·advantage (PAV)."""
        if not features.size:
            return []
        scores = self.value.predict(features)
        if self.advantage is not None:
            scores = scores + self.alpha * self.advantage.predict(features)
        return [float(s) for s in scores]

    def save(self, out_dir: Path) -> Path:
        """Write head.json into out_dir (created); returns its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / HEAD_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "RewardHead":
        """Read a head from a directory (its head.json) or the file itself, with errors that say what to do."""
        path = Path(path)
        file = path / HEAD_FILE if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"{path}: no trained verifier there (expected {HEAD_FILE}); make one with `ttscale verifier train RUN... -o DIR`")
        try:
            return cls.model_validate_json(file.read_text())
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ConfigError(f"{file}: field {where}: {first['msg']}; retrain with `ttscale verifier train`") from None


def data_hash(rows: Sequence[dict]) -> str:
    """sha256 over the training rows (sorted keys), so a head names exactly what it learned from."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()
