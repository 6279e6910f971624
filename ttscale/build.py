"""Plugins from a RunConfig: the benchmark, strategy, backend and verifier a run names, and what
served it.

Every plugin is made by `Registry.create` (ttscale.registry), the one place that turns an
unknown name, a missing module or a bad option into a one-line ConfigError; the runner, the Ray
replicas, `ttscale serve` and the analyses build through here or through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ttscale import registry
from ttscale.config import RunConfig
from ttscale.protocols import Backend, Benchmark, Strategy, Verifier, engine_settings_of, speculative_metrics_of


def build_benchmark(config: RunConfig) -> Benchmark:
    """The benchmark named in the config; a path to a .jsonl file means custom problems."""
    name, options = config.benchmark, dict(config.benchmark_options)
    if name.endswith(".jsonl") or Path(name).is_file():
        name, options = "jsonl", {"path": config.benchmark, **options}
    return registry.benchmarks.create(name, "benchmark options", **options)


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy named in the config, with its options validated."""
    return registry.strategies.create(config.strategy, "strategy options", **config.strategy_options)


def build_backend(config: RunConfig) -> Backend:
    """The backend named in the config, for the config's model."""
    options = {"model": config.model, **config.backend_options}
    if config.speculative is not None:
        options["speculative"] = config.speculative
    return registry.backends.create(config.backend, "backend options", **options)


def build_verifier(config: RunConfig, benchmark: Benchmark) -> Verifier | None:
    """The verifier named in the config (None when the run uses none).

    Every verifier factory receives the benchmark as `benchmark`, for answer extraction;
    only oracle verifiers (marked `uses_gold`) may call its grader.
    """
    if config.verifier is None:
        return None
    options = {"benchmark": benchmark, **config.verifier_options}
    return registry.verifiers.create(config.verifier, "verifier options", **options)


def describe_backend(backend: Backend) -> dict[str, Any]:
    """What served the run: model, parameter count, and the engine settings actually chosen."""
    # Speculative decoding: the engine's drafted/accepted/emitted counters for this run.
    speculative = speculative_metrics_of(backend)
    return {
        "backend": type(backend).__name__,
        "model": backend.model.name,
        "num_params": backend.model.num_params,
        # The model's shape, so an analysis prices the run as its meters did (ttscale.analysis.runs).
        "shape": backend.model.shape.to_dict() if backend.model.shape is not None else None,
        "engine_settings": engine_settings_of(backend),
        **({"speculative": speculative} if speculative else {}),
    }
