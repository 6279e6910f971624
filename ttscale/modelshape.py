"""A model's shape, read from its Hugging Face config.json: what the cost model needs.

P (parameters, embeddings included), layers, d_model, attention heads, KV heads and head dim.
P is counted from the safetensors headers when the weights are there (exact, tied embeddings
once), else estimated from the config for Llama-style decoders (Llama, Mistral, Qwen2, ...).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttscale.models import EMBEDDED_MODELS, cache_dir, count_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a dense decoder-only transformer."""

    num_params: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def kv_per_token(self) -> int:
        """D: KV cache elements per token, K and V over every layer (Kinetics' D)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    @property
    def gqa_ratio(self) -> float:
        """r: query heads per KV head (grouped-query attention)."""
        return self.n_heads / self.n_kv_heads

    def to_dict(self) -> dict[str, int]:
        """Plain fields, for JSON."""
        return {
            "num_params": self.num_params, "n_layers": self.n_layers, "d_model": self.d_model,
            "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim,
        }


def _first(config: dict[str, Any], *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return None


def shape_from_config(config: dict[str, Any], num_params: int | None = None) -> ModelShape:
    """The shape from a config.json dict; `num_params` overrides the estimate from the config.

    Raises ValueError naming the missing field when the config lacks a dimension.
    """
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the LM inside
        config = {**config, **config["text_config"]}
    n_layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    d_model = _first(config, "hidden_size", "n_embd", "d_model")
    n_heads = _first(config, "num_attention_heads", "n_head")
    missing = [name for name, value in (("num_hidden_layers", n_layers), ("hidden_size", d_model),
                                        ("num_attention_heads", n_heads)) if value is None]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}")
    n_kv_heads = _first(config, "num_key_value_heads", "n_kv_heads") or n_heads
    head_dim = _first(config, "head_dim") or d_model // n_heads
    if num_params is None:
        num_params = estimate_num_params(config)
    if num_params is None:
        raise ValueError("parameter count unknown: no weights to count and not a Llama-style config")
    return ModelShape(int(num_params), int(n_layers), int(d_model), int(n_heads), int(n_kv_heads), int(head_dim))


def estimate_num_params(config: dict[str, Any]) -> int | None:
    """Parameters of a Llama-style decoder (gated MLP, RMSNorm), embeddings included; else None."""
    needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    if any(config.get(name) is None for name in needed):
        return None
    if config.get("model_type") not in {None, "llama", "mistral", "qwen2", "qwen3", "smollm3"}:
        return None
    vocab, d, layers, heads = (config[name] for name in needed[:4])
    ff = config["intermediate_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = d * q + 2 * d * kv + q * d
    if config.get("attention_bias"):
        attention += q + 2 * kv
    if config.get("model_type") == "qwen2":  # Qwen2 has q/k/v biases, no o bias
        attention += q + 2 * kv
    if config.get("model_type") == "qwen3":  # per-head q/k RMSNorm
        attention += 2 * head_dim
    mlp = 3 * d * ff + (2 * ff + d if config.get("mlp_bias") else 0)
    per_layer = attention + mlp + 2 * d  # two RMSNorms
    embeddings = vocab * d * (1 if config.get("tie_word_embeddings", False) else 2)
    return embeddings + layers * per_layer + d  # final norm


def load_shape(model_dir: str | Path) -> ModelShape | None:
    """The shape of a model directory (config.json, weights counted when present), or None."""
    path = Path(model_dir).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
        return shape_from_config(config, count_parameters(path.parent))
    except (OSError, ValueError, TypeError) as error:
        log.warning("cannot read the model shape from %s (%s)", path, error)
        return None


def shape_for_model(name_or_path: str) -> ModelShape | None:
    """The shape of an embedded model (if prepared), a local directory, or a hub id already in
    the local Hugging Face cache; None when it cannot be known without downloading."""
    if name_or_path in EMBEDDED_MODELS:
        return load_shape(cache_dir() / "models" / name_or_path)
    if (Path(name_or_path).expanduser() / "config.json").is_file():
        return load_shape(name_or_path)
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return load_shape(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # not in the local cache, or no huggingface_hub: shape unknown
            return None
    return None
