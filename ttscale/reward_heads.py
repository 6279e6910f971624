"""Reward heads on the policy model's own hidden states: what a trained verifier reads and computes.

A solution is scored the way search strategies see it: its steps (ttscale.steps) joined by blank
lines, read after the prompt as the assistant's turn. The policy model reads that text once (a
prefill on a hidden-state pooling backend: VLLMPoolingBackend(mode="hidden"), or the fake one in
tests) and the final hidden state at the last token of each step is that step's feature vector.
A decoder attends causally, so a step's vector depends only on the prompt and the steps up to it:
scores of a prefix can be reused when a search asks again.

A head is a linear map on standardized features, stored as plain numbers in head.json (a server
loads it with numpy and never unpickles anything):
- ORM (label "grade"): logistic, P(the solution is graded correct), from its last step's vector;
- PRM, Math-Shepherd (label "math-shepherd"): logistic on the soft label Q = the fraction of
  rollouts from the step's prefix that reach the gold answer (Wang et al. 2024);
- PRM, PAV (label "pav"): the value head above plus a ridge head on the step's advantage
  A = Q(after) - Q(before) (Setlur et al. 2024); a step scores Q + alpha * A.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttscale.errors import ConfigError
from ttscale.steps import STEP_SEPARATOR
from ttscale.types import ChatMessage, PoolRequest, PoolResult

if TYPE_CHECKING:
    from ttscale.cost import CostMeter

FEATURES = "final-hidden-at-step-end-v1"  # the final hidden state (after the last norm) at each step's last token
HEAD_FILE = "head.json"
Kind = Literal["orm", "prm"]
Label = Literal["grade", "math-shepherd", "pav"]


def solution_text(steps: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    """The text a head reads for a solution given as steps, and where each step ends in it."""
    text, ends = "", []
    for i, step in enumerate(steps):
        text += (STEP_SEPARATOR if i else "") + step
        ends.append(len(text))
    return text, tuple(ends)


def step_request(prompt: tuple[ChatMessage, ...] | str, steps: Sequence[str]) -> PoolRequest:
    """One prefill of the prompt and the solution, asking for the rows at the steps' ends."""
    text, ends = solution_text(steps)
    return PoolRequest(prompt=prompt, prefix=text, positions=ends)


async def step_features(meter: "CostMeter", prompt: tuple[ChatMessage, ...] | str,
                        solutions: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Each solution's step-end vectors (steps x d), from one metered prefill per solution.
    A solution with no text (no steps, or only empty ones) gets an empty array and costs nothing."""
    wanted = [i for i, steps in enumerate(solutions) if solution_text(steps)[0].strip()]
    results = await meter.pool([step_request(prompt, solutions[i]) for i in wanted]) if wanted else []
    features: list[np.ndarray] = [np.zeros((0, 0))] * len(solutions)
    for i, result in zip(wanted, results):
        rows = np.asarray(result.data, dtype=np.float64)
        if rows.ndim != 2 or len(rows) != len(solutions[i]):
            raise ConfigError(f"the hidden-state backend returned {rows.shape} for {len(solutions[i])} steps; a trained "
                              "verifier needs one row per requested position (VLLMPoolingBackend(model, mode='hidden'))")
        features[i] = rows
    return features


def request_key(model: str, request: PoolRequest) -> str:
    """The cache key of a hidden-state read: sha256 over the model, the feature kind and the request."""
    prompt = request.prompt if isinstance(request.prompt, str) else [m.model_dump() for m in request.prompt]
    blob = json.dumps({"model": model, "features": FEATURES, "prompt": prompt, "prefix": request.prefix,
                       "positions": list(request.positions)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def hidden_state_backend(kind: str, model_path: str, **options: Any):
    """The backend that reads a model's hidden states: vLLM's pooling runner, or the fake (tests)."""
    if kind == "fake":
        from ttscale.backends.fake import FakeHiddenBackend

        return FakeHiddenBackend(model_path, **options)
    from ttscale.backends.vllm_pooling import VLLMPoolingBackend

    return VLLMPoolingBackend(model_path, mode="hidden", **options)


class CachedHiddenStates:
    """A hidden-state backend with an .npz cache in front: a request read before is answered with
    the rows and prompt-token count it had (so a meter prices it as the prefill it stands for), and
    the engine behind starts only for requests not read before. The cache is written on close.

    Training, `ttscale verifier eval` and a replayed run scored with `-V features=FILE` thus read
    each solution once. The file is read with allow_pickle=False."""

    def __init__(self, backend: Any, path: Path | str | None):
        self._backend = backend
        self.model = backend.model
        self.path = Path(path) if path is not None else None
        self._rows: dict[str, np.ndarray] = {}
        self._tokens: dict[str, int] = {}
        self._added = False
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    keys, offsets, rows, tokens = (data[k] for k in ("keys", "offsets", "rows", "prompt_tokens"))
            except (OSError, ValueError, KeyError) as error:
                raise ConfigError(f"{self.path}: not a step-feature cache ({error}); delete it to recompute") from None
            for i, key in enumerate(keys):
                self._rows[str(key)] = rows[offsets[i]:offsets[i + 1]].astype(np.float64)
                self._tokens[str(key)] = int(tokens[i])

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Rows from the cache, or from the engine (then kept)."""
        keys = [request_key(self.model.name, r) for r in requests]
        unread = {k: r for k, r in zip(keys, requests) if k not in self._rows}
        if unread:
            for key, result in zip(unread, await self._backend.pool(list(unread.values()))):
                self._rows[key], self._tokens[key] = np.asarray(result.data, dtype=np.float64), result.prompt_tokens
            self._added = True
        return [PoolResult(data=tuple(map(tuple, self._rows[k].tolist())), prompt_tokens=self._tokens[k]) for k in keys]

    def save(self) -> None:
        """Write every entry atomically (a temporary file renamed over the old one)."""
        if self.path is None or not self._added:
            return
        keys = sorted(self._rows)
        offsets = np.cumsum([0] + [len(self._rows[k]) for k in keys])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), offsets=offsets, rows=np.concatenate([self._rows[k] for k in keys]).astype(np.float32),
                 prompt_tokens=np.asarray([self._tokens[k] for k in keys]))
        tmp.replace(self.path)
        self._added = False

    async def generate(self, requests):
        return await self._backend.generate(requests)

    async def close(self) -> None:
        """Write the cache, then stop the engine behind."""
        try:
            self.save()
        finally:
            await self._backend.close()


class LinearHead(BaseModel):
    """link((x - feature_mean) / feature_scale · coef + intercept), with link logistic or identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    link: Literal["logistic", "identity"]
    feature_mean: list[float]
    feature_scale: list[float]
    coef: list[float]
    intercept: float
    penalty: float = Field(description="the regularization chosen by cross-validation (logistic C, ridge alpha)")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """One output per row of x (rows x d)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(self.coef):
            raise ConfigError(f"the head expects {len(self.coef)} features, got {x.shape[1]}; score with the model it was trained on")
        z = ((x - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z)) if self.link == "logistic" else z


class Provenance(BaseModel):
    """What a head was trained on: enough to check that no held-out problem reached it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runs: list[str] = Field(description="the run directories read")
    split_rule: str = Field(description="how problems are split: ttscale.allocation.policy.split_of")
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
    features: str = FEATURES
    value: LinearHead
    advantage: LinearHead | None = None
    alpha: float = Field(default=1.0, description="PAV: weight of the advantage in a step's score")
    provenance: Provenance

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
