"""What runs for a request. Each source (the body's `ttscale` object, the X-TTS-* headers, a
model-name prefix, the server's default) is a Layer; the first that names a strategy, a budget or
the policy decides, and options from the layers above it, or below it naming the same strategy, apply."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from ttscale import registry
from ttscale.serve.protocol import APIError, TtsOptions, bad_request
from ttscale.serve.settings import ServeSettings

POLICY_PREFIX = "policy"

@dataclass
class Layer:
    """What one source (body, headers, model name, server default) asks to run."""

    source: Literal["extra_body", "header", "model", "default"]
    strategy: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    verifier: str | None = None
    verifier_set: bool = False
    budget_flops: float | None = None
    budget_samples: int | None = None
    policy: bool = False
    param: dict[str, str] = field(default_factory=dict)  # field -> the name the client used

    @property
    def decides(self) -> bool:
        return self.strategy is not None or self.policy or self.budget_flops is not None or self.budget_samples is not None


@dataclass
class Resolved:
    """What runs for a request: a strategy with options and verifier, or the policy under a budget."""

    source: str
    strategy: str | None
    options: dict[str, Any]
    verifier: str | None
    budget_flops: float | None = None
    budget_samples: int | None = None
    n_from_default: bool = False
    param: dict[str, str] = field(default_factory=dict)

    @property
    def policy(self) -> bool:
        return self.strategy is None


def body_layer(options: TtsOptions | None) -> Layer:
    """The `ttscale` object of the body as a Layer."""
    layer = Layer("extra_body")
    if options is None:
        return layer
    layer.strategy = options.strategy
    layer.options = dict(options.options)
    for name in ("n", "selection"):
        if getattr(options, name) is not None:
            layer.options[name] = getattr(options, name)
    layer.verifier, layer.verifier_set = options.verifier, "verifier" in options.model_fields_set
    layer.budget_flops, layer.budget_samples = options.budget_flops, options.budget_samples
    layer.param = {"strategy": "ttscale.strategy", "options": "ttscale.options", "verifier": "ttscale.verifier",
                   "budget_flops": "ttscale.budget_flops", "budget_samples": "ttscale.budget_samples",
                   **{key: f"ttscale.options.{key}" for key in options.options}}
    for name in ("n", "selection"):  # given beside `options`, these win: name them where they were given
        if getattr(options, name) is not None:
            layer.param[name] = f"ttscale.{name}"
    return layer


def header_layer(headers: Any) -> Layer:
    """X-TTS-Strategy, X-TTS-Budget-Flops, X-TTS-Budget-Samples as a Layer."""
    layer = Layer("header", param={"strategy": "X-TTS-Strategy", "budget_flops": "X-TTS-Budget-Flops",
                                   "budget_samples": "X-TTS-Budget-Samples", "options": "X-TTS-Strategy"})
    strategy = headers.get("x-tts-strategy")
    if strategy is not None:
        layer.strategy, layer.options = split_strategy(strategy.strip())
        if layer.options:
            layer.param["n"] = "X-TTS-Strategy"
    flops = headers.get("x-tts-budget-flops")
    if flops is not None:
        try:
            layer.budget_flops = float(flops)
        except ValueError:
            raise bad_request(f"X-TTS-Budget-Flops {flops!r} is not a number; send FLOPs per prompt, e.g. 1e11", "X-TTS-Budget-Flops") from None
    samples = headers.get("x-tts-budget-samples")
    if samples is not None:
        try:
            layer.budget_samples = int(samples)
        except ValueError:
            raise bad_request(f"X-TTS-Budget-Samples {samples!r} is not a whole number of samples", "X-TTS-Budget-Samples") from None
    return layer


def split_strategy(name: str) -> tuple[str, dict[str, Any]]:
    """"best-of-n-8" as ("best-of-n", {"n": 8}); a registered name, or anything else, as it is."""
    match = re.fullmatch(r"(.+)-(\d+)", name)
    if name not in registry.strategies and match and match.group(1) in registry.strategies:
        return match.group(1), {"n": int(match.group(2))}
    return name, {}


def model_layer(model: str, served: str) -> Layer:
    """The model name's prefix (`best-of-n-8/`, `beam-search/`, `policy/`) as a Layer; 404 for another model."""
    layer = Layer("model", param={"strategy": "model", "n": "model", "options": "model", "budget_flops": "model", "budget_samples": "model"})
    if model == served:
        return layer
    prefix, slash, rest = model.partition("/")
    if not slash or rest != served:
        raise APIError(404, f"the model {model!r} does not exist here; this server serves {served!r}, "
                            f"optionally prefixed with a strategy (best-of-n-8/{served}) or {POLICY_PREFIX}/{served}",
                       param="model", code="model_not_found")
    if prefix == POLICY_PREFIX:
        layer.policy = True
        return layer
    strategy, options = split_strategy(prefix)
    if strategy in registry.strategies:
        layer.strategy, layer.options = strategy, options
        return layer
    raise APIError(404, f"the model {model!r} does not exist here: {prefix!r} is no strategy "
                        f"({', '.join(registry.strategies.names())}) and not {POLICY_PREFIX!r}",
                   param="model", code="model_not_found")


def default_layer(settings: ServeSettings) -> Layer:
    """The server's default setting as a Layer."""
    return Layer("default", strategy=settings.strategy, options=dict(settings.strategy_options),
                 verifier=settings.verifier, verifier_set=True)


def resolve(layers: Sequence[Layer]) -> Resolved:
    """The first layer that names a strategy, a budget or the policy decides what runs.

    Options come from the layers above it, and from layers below that name the same strategy;
    a higher layer overrides a lower one. Under a budget the policy chooses everything, so a
    strategy option given with it is refused.
    """
    index, decider = next((i, layer) for i, layer in enumerate(layers) if layer.decides)
    if decider.strategy is not None and (decider.budget_flops is not None or decider.budget_samples is not None):
        param = decider.param.get("budget_flops" if decider.budget_flops is not None else "budget_samples")
        raise bad_request(f"{param} and {decider.param.get('strategy')} are both given: a budget lets the policy choose "
                          "the strategy; drop one", param)
    if decider.strategy is None:  # the policy, under a budget
        budget = next((layer for layer in layers if layer.budget_flops is not None or layer.budget_samples is not None), None)
        if budget is None:
            raise bad_request(f"{decider.param.get('strategy', 'model')}: the policy needs a per-prompt budget; send "
                              "X-TTS-Budget-Flops or X-TTS-Budget-Samples (or ttscale.budget_flops)", "budget_flops")
        for layer in layers[: index + 1]:
            given = [name for name in ("n", "selection") if name in layer.options] + (["options"] if set(layer.options) - {"n", "selection"} else [])
            given += ["verifier"] if layer.verifier_set and layer.source != "default" else []
            if given:
                param = layer.param.get(given[0], given[0])
                raise bad_request(f"{param}: under a budget the policy chooses the setting; drop {param} or the budget", param)
        return Resolved(budget.source, None, {}, None, budget.budget_flops, budget.budget_samples,
                        param={"budget_flops": budget.param.get("budget_flops", "budget_flops"),
                               "budget_samples": budget.param.get("budget_samples", "budget_samples")})
    strategy = decider.strategy
    applying = [layer for i, layer in enumerate(layers) if i <= index or layer.strategy == strategy]
    options: dict[str, Any] = {}
    param: dict[str, str] = {"strategy": decider.param.get("strategy", "strategy")}
    n_from_default = False
    verifier, verifier_found = None, False
    for layer in applying:  # the highest layer first: it wins
        for key, value in layer.options.items():
            if key not in options:
                options[key] = value
                param[key] = layer.param.get(key, layer.param.get("options", f"ttscale.options.{key}"))
                n_from_default = n_from_default or (key == "n" and layer.source == "default")
        if layer.verifier_set and not verifier_found:
            verifier, verifier_found = layer.verifier, True
            param["verifier"] = layer.param.get("verifier", "verifier")
    return Resolved(decider.source, strategy, options, verifier, n_from_default=n_from_default, param=param)
