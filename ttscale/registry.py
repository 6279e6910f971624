"""Plugins by name, one registry per kind: ttscale's own, and those of any installed package.

ttscale's built-in plugins are the table at the bottom, as lazy "module:attr" strings (importing
ttscale never imports vLLM). Another package adds plugins through entry points, one group per
kind (ENTRY_POINT_GROUPS), as inspect_ai does; in its pyproject.toml:

    [project.entry-points."ttscale.strategies"]
    my-strategy = "my_package.strategy:MyStrategy"

after which `ttscale eval -s my-strategy` finds it. Installed packages' entry points are read
once per process, the first time a name is asked for or listed; a plugin's module is imported
only when its name is asked for. A name claimed twice (by a plugin and a built-in, or by two
plugins) is an error naming both packages, never a silent choice; a plugin whose module fails
to import is an error naming its entry point and the exception.

The built-ins stay a table rather than ttscale's own entry points because entry points are
written when a package is installed: a source checkout run through PYTHONPATH has none, and an
editable install made before a built-in was added would not know it until reinstalled.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, TypeVar

from pydantic import ValidationError

from ttscale.errors import ConfigError, UnknownNameError, describe_validation_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory: a built-in (given lazily as an import string "module:attr", or
    registered at runtime) or an installed package's entry point in this kind's group."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.group = f"ttscale.{self.plural}"  # the entry-point group other packages register in
        self._entries: dict[str, Callable[..., T] | str] = {}
        self._plugins: dict[str, list[EntryPoint]] | None = None  # read on first use
        self._loaded: dict[str, Callable[..., T]] = {}  # plugins imported so far

    def register(self, name: str, factory: Callable[..., T] | str | None = None):
        """Register `factory` under `name`; without a factory, works as a decorator."""
        if factory is not None:
            self._entries[name] = factory
            return factory

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = fn
            return fn

        return decorator

    def plugins(self) -> dict[str, list[EntryPoint]]:
        """Installed packages' entry points in this kind's group, by name (several claims of one
        name are kept, to say who clashes)."""
        if self._plugins is None:
            found: dict[str, list[EntryPoint]] = {}
            for entry_point in entry_points(group=self.group):
                found.setdefault(entry_point.name, []).append(entry_point)
            self._plugins = found
        return self._plugins

    def names(self) -> list[str]:
        """All names: built-in and installed plugins', sorted."""
        return sorted(set(self._entries) | set(self.plugins()))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self.plugins()

    def factory(self, name: str) -> Callable[..., T]:
        """The factory for `name`, importing it on first use."""
        claims = self.plugins().get(name, [])
        if name not in self._entries and not claims:
            raise UnknownNameError(self._unknown(name))
        if len(claims) + (name in self._entries) > 1:
            raise PluginError(self._clash(name, claims))
        if claims:
            return self._load(claims[0])
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry

    def _load(self, entry_point: EntryPoint) -> Callable[..., T]:
        name = entry_point.name
        if name not in self._loaded:
            try:
                factory = entry_point.load()
            except Exception as error:  # third-party code may fail any way: each is one line naming the plugin
                raise PluginError(
                    f"{self.kind} plugin {name!r} failed to load: {_describe(entry_point)} raised "
                    f"{type(error).__name__}: {error}; fix or uninstall {_package(entry_point)}"
                ) from None
            if not callable(factory):
                raise PluginError(
                    f"{self.kind} plugin {name!r}: {_describe(entry_point)} names a {type(factory).__name__}, "
                    "not a class or factory; point it at one ('module:Class')"
                )
            self._loaded[name] = factory
        return self._loaded[name]

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        known = [self._with_origin(n) for n in self.names()]
        return (f"unknown {self.kind} {name!r}.{hint} Known {self.plural}: {', '.join(known)}. "
                f"Other packages add {self.plural} through the {self.group!r} entry-point group.")

    def _with_origin(self, name: str) -> str:
        """A name as listed to the user: a plugin's with the package(s) that declare it."""
        packages = [_package(e) for e in self.plugins().get(name, [])]
        if not packages:
            return name
        return f"{name} (from {' and '.join((['ttscale'] if name in self._entries else []) + packages)})"

    def _clash(self, name: str, claims: list[EntryPoint]) -> str:
        owners = [f"ttscale (built-in {_import_string(self._entries[name])})"] if name in self._entries else []
        owners += [f"{_package(e)} ({_describe(e)})" for e in claims]
        return (f"{self.kind} {name!r} is claimed by {' and by '.join(owners)}; uninstall one package "
                f"or rename its entry point in the {self.group!r} group")

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


class PluginError(ConfigError):
    """An installed package's plugin cannot be used: its name clashes, or it fails to load."""


def _package(entry_point: EntryPoint) -> str:
    """The installed package (distribution) that declares an entry point, with its version."""
    dist = entry_point.dist
    return f"package {dist.name} {dist.version}" if dist is not None else "an unknown package"


def _import_string(entry: Callable[..., Any] | str) -> str:
    """A built-in's "module:attr", whether or not it was imported yet."""
    return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"


def _describe(entry_point: EntryPoint) -> str:
    return f"entry point '{entry_point.name} = {entry_point.value}' in group {entry_point.group!r}"


class PluginOptionError(ConfigError):
    """A plugin's factory refused its options; `option` is the first bad one, when known."""

    def __init__(self, message: str, option: str | None):
        super().__init__(message)
        self.option = option


# One registry per kind; its entry-point group is ttscale.<plural> (ttscale.strategies, ...).
backends: Registry[Any] = Registry("backend")
strategies: Registry[Any] = Registry("strategy", "strategies")
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
strategies.register("self-debug", "ttscale.strategies.self_debug:SelfDebug")
strategies.register("plansearch", "ttscale.strategies.plansearch:PlanSearch")
strategies.register("program-of-thought", "ttscale.strategies.program_of_thought:ProgramOfThought")
strategies.register("budget-forcing", "ttscale.strategies.budget_forcing:BudgetForcing")
strategies.register("mcts", "ttscale.strategies.mcts:MCTS")
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

ENTRY_POINT_GROUPS = {each.kind: each.group for each in (backends, strategies, verifiers, benchmarks)}
