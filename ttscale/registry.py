"""One small registry per kind of plugin, with lazy "module:attr" entries and "did you mean" errors."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, TypeVar

from pydantic import ValidationError

from ttscale.errors import ConfigError, UnknownNameError, describe_validation_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory; a factory may be given lazily as an import string "module:attr"."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T] | str] = {}

    def register(self, name: str, factory: Callable[..., T] | str | None = None):
        """Register `factory` under `name`; without a factory, works as a decorator."""
        if factory is not None:
            self._entries[name] = factory
            return factory

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def factory(self, name: str) -> Callable[..., T]:
        """The factory for `name`, importing it on first use."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}."
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry

    def create(self, name: str, what: str | None = None, /, **options: Any) -> T:
        """Build the plugin registered as `name` with keyword options; every mistake is a ConfigError.

        `what` names where the options came from (e.g. "strategy options", "--backend-option"), for
        the message. An unknown name says "did you mean"; a registered plugin whose module cannot be
        imported here, a bad option (PluginOptionError, naming the first bad option) or a factory's
        TypeError/ValueError is one line naming the plugin. (`name` and `what` are positional-only,
        so an option may be called anything.)
        """
        try:
            factory = self.factory(name)
        except ImportError as error:  # registered, but its module (or a dependency) is missing from this install
            raise ConfigError(f"{self.kind} {name!r} cannot be loaded here ({error}); use another {self.kind}") from None
        where = f"{self.kind} {name!r}" + (f", {what}" if what else "")
        try:
            return factory(**options)
        except ValidationError as error:
            first = error.errors()[0]["loc"] if error.errors() else ()
            option = str(first[0]) if first else None
            raise PluginOptionError(describe_validation_error(error, where), option) from None
        except (TypeError, ValueError) as error:
            hint = f"; check the {what} you passed" if what else ""
            raise PluginOptionError(f"{self.kind} {name!r}: {error}{hint}", None) from None


class PluginOptionError(ConfigError):
    """A plugin's factory refused its options; `option` is the first bad one, when known."""

    def __init__(self, message: str, option: str | None):
        super().__init__(message)
        self.option = option


backends: Registry[Any] = Registry("backend")
strategies: Registry[Any] = Registry("strategy")
verifiers: Registry[Any] = Registry("verifier")
benchmarks: Registry[Any] = Registry("benchmark")

# Built-in plugins, registered lazily so that importing ttscale never imports vLLM.
backends.register("fake", "ttscale.backends.fake:FakeBackend")
backends.register("vllm", "ttscale.backends.vllm:VLLMBackend")
backends.register("openai", "ttscale.backends.openai_http:OpenAIBackend")
backends.register("replay", "ttscale.backends.replay:ReplayBackend")
strategies.register("best-of-n", "ttscale.strategies.best_of_n:BestOfN")
strategies.register("revision", "ttscale.strategies.revision:Revision")
strategies.register("beam-search", "ttscale.strategies.beam_search:BeamSearch")
strategies.register("dvts", "ttscale.strategies.dvts:DVTS")
strategies.register("particle-filter", "ttscale.strategies.particle_filter:ParticleFilter")
strategies.register("adaptive-consistency", "ttscale.strategies.adaptive_consistency:AdaptiveConsistency")
strategies.register("deepconf", "ttscale.strategies.deepconf:DeepConf")
verifiers.register("llm-judge-prm", "ttscale.verifiers.prm:LLMJudgePRM")
verifiers.register("vllm-prm", "ttscale.verifiers.prm:VLLMPRM")
verifiers.register("oracle-orm", "ttscale.verifiers.prm:OracleORM")
verifiers.register("scripted-prm", "ttscale.verifiers.prm:ScriptedPRM")
verifiers.register("trained", "ttscale.verifiers.trained:TrainedVerifier")
verifiers.register("self-certainty", "ttscale.verifiers.self_certainty:SelfCertaintyVerifier")
benchmarks.register("arithmetic", "ttscale.benchmarks.arithmetic:ArithmeticBenchmark")
benchmarks.register("gsm-symbolic", "ttscale.benchmarks.gsm_symbolic:GsmSymbolicBenchmark")
benchmarks.register("jsonl", "ttscale.benchmarks.jsonl:JsonlBenchmark")
benchmarks.register("gsm8k", "ttscale.benchmarks.gsm8k:Gsm8kBenchmark")
benchmarks.register("math500", "ttscale.benchmarks.math500:Math500Benchmark")
benchmarks.register("aime24", "ttscale.benchmarks.aime24:Aime24Benchmark")
benchmarks.register("champ", "ttscale.benchmarks.champ:ChampBenchmark")
benchmarks.register("humaneval", "ttscale.benchmarks.humaneval:HumanEvalBenchmark")
benchmarks.register("mbpp", "ttscale.benchmarks.mbpp:MbppBenchmark")
