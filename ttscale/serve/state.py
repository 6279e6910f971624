"""The server's state: the one backend (one engine for every request), the answer tools, the
policy, strategies and verifiers built once, the metrics, and the slots that bound concurrency.
Every plugin is built by Registry.create (ttscale.registry), whose one-line errors become 400s
naming the field they came from."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from typing import Any

from ttscale import registry
from ttscale.allocation.policy import AllocationPolicy
from ttscale.build import build_benchmark
from ttscale.config import RunConfig
from ttscale.errors import ConfigError
from ttscale.grading.math_answer import DEFAULT_VERIFIER
from ttscale.hidden_states import hidden_state_backend
from ttscale.protocols import needs_verifier, samples_per_problem, size_for_workload, start_now
from ttscale.registry import PluginOptionError
from ttscale.serve.metrics import Metrics
from ttscale.serve.protocol import bad_request
from ttscale.serve.settings import ServeSettings


# --- the server's state ---------------------------------------------------------------------------


class ServerState:
    """The one backend, the answer tools, the policy, verifiers with their own engines, metrics."""

    def __init__(self, settings: ServeSettings, backend: Any, policy: Any = None, probe_backend: Any = None):
        self.settings = settings
        self.backend = backend
        self.policy = policy
        self.probe_backend = probe_backend  # a policy's prefill probe reads hidden states from this pooling engine
        self.answers = DEFAULT_VERIFIER  # math answers: \boxed{}, a stated or a last number
        self.policy_answers = None
        self.metrics = Metrics()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.stopping = asyncio.Event()  # set when shutdown begins: bodies still coming in are not waited for
        self._engine_verifiers: dict[str, Any] = {}  # verifiers with their own engine, built once
        self._strategies: dict[str, tuple[Any, bool, int]] = {}
        self.started = time.time()
        if policy is not None:
            policy.check_model(backend.model.name)
            self.policy_answers = build_benchmark(RunConfig(benchmark=policy.benchmark, benchmark_options=policy.benchmark_options))

    @classmethod
    async def start(cls, settings: ServeSettings, backend: Any = None, probe_backend: Any = None) -> "ServerState":
        """Build the backend (unless given), size and start its engine, load and check the policy;
        a policy with a prefill probe also gets its pooling engine (unless given)."""
        policy = None
        if settings.policy is not None:
            policy = AllocationPolicy.load(settings.policy)
            if policy.probe.is_prefill and probe_backend is None:
                probe_backend = prefill_probe_backend(settings)
        if backend is None:
            backend = registry.backends.create(settings.backend, "--backend-option",
                                               **{"model": settings.model, **settings.backend_options})
        state = cls(settings, backend, policy, probe_backend)
        state.warm_up()
        # The engine's KV cache holds what is in flight at once: `concurrency` problems of up to max_tokens_limit.
        size_for_workload(backend, sequences=settings.concurrency, max_tokens=settings.max_tokens_limit)
        await start_now(backend)  # the vLLM engine starts here, not on the first request
        await start_now(probe_backend)  # the pooling engine, likewise
        return state

    def warm_up(self) -> None:
        """Import and exercise what the first request needs (the default strategy, answer extraction
        and math-verify's parser), so that it does not wait seconds behind lazy imports."""
        importlib.import_module("ttscale.solve")
        registry.strategies.factory(self.settings.strategy)
        for answers in filter(None, (self.answers, self.policy_answers)):
            answers.equivalent(answers.extract_answer("The answer is \\boxed{2}.") or "2", "2")

    async def close(self) -> None:
        """Close verifiers with their own engines, then the backend."""
        for verifier in self._engine_verifiers.values():
            await verifier.close()
        if self.probe_backend is not None:
            await self.probe_backend.close()
        await self.backend.close()

    @property
    def model_name(self) -> str:
        """The model's name as clients send it."""
        return self.backend.model.name

    def strategy(self, name: str, options: dict[str, Any], param: dict[str, str]) -> tuple[Any, bool, int]:
        """A validated strategy, whether it needs a verifier, and its N; cached per name and options
        (strategies hold no state beyond one problem, and the protocol checks are not cheap)."""
        key = name + json.dumps(options, sort_keys=True, default=str)
        found = self._strategies.get(key)
        if found is not None:
            return found
        where = param.get("strategy", "strategy")
        try:
            strategy = registry.strategies.create(name, **options)
        except PluginOptionError as error:  # a bad option: named where the client gave it
            raise bad_request(str(error), param.get(error.option or "", where)) from None
        except ConfigError as error:  # an unknown name, or a strategy this install cannot load
            raise bad_request(str(error), where) from None
        found = (strategy, needs_verifier(strategy), samples_per_problem(strategy))
        if len(self._strategies) < 1024:  # bounded: options come from clients
            self._strategies[key] = found
        return found

    def verifier(self, name: str | None, param: str, answers: Any = None) -> Any:
        """A verifier by name (None: none); refuses one that reads gold answers (a request has none)."""
        if name is None:
            return None
        if name in self._engine_verifiers:
            return self._engine_verifiers[name]
        options = dict(self.settings.verifier_options) if name == self.settings.verifier else {}
        try:
            verifier = registry.verifiers.create(name, **{"benchmark": answers or self.answers, **options})
        except ConfigError as error:
            raise bad_request(str(error), param) from None
        if verifier.uses_gold:
            raise bad_request(f"verifier {name!r} reads gold answers, and a request has none; use a verifier that does not", param)
        if verifier.backend is not None:  # its own engine: keep it for the server's lifetime
            self._engine_verifiers[name] = verifier
        return verifier


def prefill_probe_backend(settings: ServeSettings) -> Any:
    """The pooling engine a policy's prefill probe reads the prompt's hidden states from: the
    policy model's own, beside the generation engine (vLLM runs one runner per engine)."""
    if settings.backend != "vllm":
        raise ConfigError(f"the policy {settings.policy} probes with the model's hidden states (--probe prefill), which "
                          f"only an in-process engine gives; serve it with --backend vllm, or refit it with --probe agreement")
    return hidden_state_backend("vllm", settings.model)
