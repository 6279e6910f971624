"""Self-certainty (Kang et al. 2025, "Scalable Best-of-N Selection for Large Language Models via
Self-Certainty"): how far, on average over a sample's tokens, the model's next-token distribution
is from uniform, over the FULL vocabulary of V tokens:

    self-certainty(y | x) = -1/(n V) * sum_{i=1..n} sum_{j=1..V} log(V * p(j | x, y_<i))
                          = mean_i KL(U || p_i),

higher where the model was sure. Per position this is the reference's
`conf = -1/V * logprob_sum - log(V)` (backprop07/Self-Certainty, src/confidence_list.py line 22),
with `logprob_sum` the sum of log_softmax over the whole vocabulary (lines 187-190) and V the
model's `config.vocab_size` (line 194), averaged over the sample's tokens (line 24). From the
logits z of a position: sum_j log p_j = sum_j z_j - V * logsumexp(z), so the score of a position
is logsumexp(z) - mean(z) - log V.

Which positions: the paper's p_i predicts token i of the sample, so its n distributions are those
at the last prompt token and at every sample token but the last. The reference slices the logits
from the prompt's length on (confidence_list.py line 188): the distributions after each sample
token, one position later (the one that predicted the first token is left out; the one after the
last, which predicted the end of the sample, is in). ttscale follows the paper's formula.

How they are read: the policy model prefills the prompt and the sample once, on a hidden-state
pooling backend (VLLMPoolingBackend(mode="hidden"): the final hidden state of every token, after
the model's last norm), metered like any verifier's prefill; the LM head (the output embedding,
tied to the input one in SmolLM2) read from the model's safetensors turns each row into the
position's V logits. The prefill is priced at 2 P per token with P counting the embedding matrix,
which is the LM head's 2 V d per position; the log-softmax (a few V per position) is not priced.
No gold is read: the model's own distributions only.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from safetensors import safe_open

from ttscale.errors import ConfigError
from ttscale.types import ChatMessage, PoolRequest

if TYPE_CHECKING:
    from ttscale.cost import CostMeter

ROWS_PER_MATMUL = 256  # positions turned into logits at once (256 x V float64: 100 MB for V = 49,152)
UNSUPPORTED_LOGIT_CONFIG = ("logit_scale", "final_logit_softcapping", "output_multiplier_scale")  # logits not h @ W^T


def position_self_certainty(logits: np.ndarray) -> np.ndarray:
    """KL(U || softmax(z)) for each row z of logits (positions x V): logsumexp(z) - mean(z) - log V."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(z - top).sum(axis=-1))
    return lse - z.mean(axis=-1) - math.log(z.shape[-1])


class LMHead:
    """A causal LM's output layer, logits = h @ W^T with W (V x d), read from a model directory's
    safetensors: `lm_head.weight`, or the input embedding when the config ties them."""

    def __init__(self, weight: np.ndarray):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def load(cls, model_dir: Path | str) -> "LMHead":
        model_dir = Path(model_dir)
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"{model_dir}: no config.json; self-certainty reads the LM head from a local model directory")
        config = json.loads(config_file.read_text())
        odd = [key for key in UNSUPPORTED_LOGIT_CONFIG if config.get(key) not in (None, 1, 1.0)]
        if odd:
            raise ConfigError(f"{model_dir}: the model scales or caps its logits ({', '.join(odd)}); self-certainty reads h @ W^T only")
        key = "model.embed_tokens.weight" if config.get("tie_word_embeddings", False) else "lm_head.weight"
        for file in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                if key in handle.keys():
                    return cls(handle.get_tensor(key).to(torch.float32).numpy())
        raise ConfigError(f"{model_dir}: no {key} in its safetensors files; self-certainty needs the model's weights on disk")

    def self_certainty(self, hidden: np.ndarray) -> float:
        """The mean over rows of hidden states (positions x d) of KL(U || softmax(h W^T))."""
        hidden = np.asarray(hidden, dtype=np.float32)
        if hidden.ndim != 2 or hidden.shape[1] != self.weight.shape[1]:
            raise ConfigError(f"hidden states of shape {hidden.shape} do not fit an LM head of {self.weight.shape}; "
                              "read them with the same model")
        if not len(hidden):
            return 0.0
        total = math.fsum(
            float(position_self_certainty(hidden[i:i + ROWS_PER_MATMUL] @ self.weight.T).sum())
            for i in range(0, len(hidden), ROWS_PER_MATMUL)
        )
        return total / len(hidden)


@runtime_checkable
class PromptRows(Protocol):
    """A hidden-state backend that says how many of a request's rows are its prompt's
    (VLLMPoolingBackend.prompt_rows), so the rows that predicted the prefix's tokens can be found."""

    def prompt_rows(self, request: PoolRequest) -> int: ...


async def sample_self_certainties(meter: "CostMeter", backend: object, head: LMHead,
                                  prompt: tuple[ChatMessage, ...] | str, texts: Sequence[str]) -> list[float]:
    """Each sample's self-certainty, from one metered prefill of the prompt and the sample.

    `meter` wraps `backend` (a hidden-state pooling backend with `prompt_rows`). A sample with no
    text has no token to average over: 0.0 (the least certain), and costs nothing."""
    if not isinstance(backend, PromptRows):
        raise ConfigError(f"{type(backend).__name__} cannot say where a sample starts among its rows; "
                          "self-certainty reads VLLMPoolingBackend(model, mode='hidden')")
    wanted = [i for i, text in enumerate(texts) if text]
    requests = [PoolRequest(prompt=prompt, prefix=texts[i]) for i in wanted]
    results = await meter.pool(requests) if requests else []
    scores = [0.0] * len(texts)
    for i, request, result in zip(wanted, requests, results):
        rows = np.asarray(result.data, dtype=np.float32)
        start = backend.prompt_rows(request)
        if not 0 < start < len(rows):
            raise ConfigError(f"the hidden-state backend returned {len(rows)} rows with {start} of the prompt; "
                              "self-certainty needs a row for every token (a request without positions)")
        # the rows that predicted the sample's tokens; the matmul (~0.3 s for 140 tokens of SmolLM2 on
        # 2 cores) runs off the event loop, so the other problems' requests reach the engine meanwhile
        scores[i] = await asyncio.to_thread(head.self_certainty, rows[start - 1:len(rows) - 1])
    return scores
