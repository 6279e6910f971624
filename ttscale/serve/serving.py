"""Running a request's problems, as vLLM's serving_chat.py/serving_completion.py do for its
server: a strategy through ttscale.solve, or the policy under a budget (probe, bin, setting);
the limits checked before anything runs; the completion object with usage and the `ttscale`
block built from Trace.cost; the answer's text handed out while it is generated, for streaming;
and errors raised while generating mapped to the status a client should see."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from starlette.requests import Request

from ttscale.allocation.policy import AllocationError
from ttscale.cost import sum_costs
from ttscale.errors import ConfigError, TtscaleError
from ttscale.protocols import samples_per_problem, streams_text
from ttscale.selection import answer_classes
from ttscale.serve.protocol import APIError, CommonBody, bad_request, one_line
from ttscale.serve.resolve import Resolved
from ttscale.serve.settings import FLAGS, LIMITED, ServeSettings
from ttscale.serve.state import ServerState
from ttscale.solve import solve
from ttscale.types import ORACLE_RULE, Candidate, Problem, SampleParams, Trace

log = logging.getLogger("ttscale.serve")

# Strategies that send the request's sampling settings as they are (others split steps on
# their own stop strings, so a client's `stop` cannot be honoured by them).
STOP_HONOURED = frozenset({"best-of-n", "revision"})


# --- errors while generating --------------------------------------------------------------------


UPSTREAM_DOWN = ("did not answer after",)  # ttscale.backends.openai_http, once its retries are spent
ENGINE_DOWN = ("EngineDeadError", "EngineGenerateError")  # vLLM's, by name: only backends import vllm


def engine_error(error: BaseException) -> APIError:
    """An error raised while generating, as the status a client should see."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, AllocationError):
        return bad_request(str(error), "budget")
    names = {type(e).__name__ for e in _chain(error)}
    text = " ".join(str(e) for e in _chain(error))
    if names & set(ENGINE_DOWN) or any(marker in text for marker in UPSTREAM_DOWN):
        return APIError(503, f"the model server is unavailable: {one_line(str(error))} This server stays up; retry shortly.",
                        code="upstream_unavailable")
    if "rejected the request (HTTP 4" in text or "vLLM rejected a request" in text:
        return bad_request(one_line(str(error)))
    if isinstance(error, ConfigError):
        return bad_request(str(error))
    if isinstance(error, TtscaleError):
        return APIError(503, one_line(str(error)), code="upstream_unavailable")
    log.exception("request failed")
    return APIError(500, f"internal error ({type(error).__name__}); see the server's log")


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


class ClientGone(Exception):
    """The client disconnected before its answer was ready; what it asked for was cancelled."""


async def unless_disconnected(request: Request, work: Any) -> Any:
    """`work`'s result; cancelled (the engine aborts its sequences) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is cancelled: so is its work
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait({task})  # the cancellation reaches the backend before the request ends
    raise ClientGone()


async def _disconnect(request: Request) -> None:
    """Returns once the client has disconnected (the body was read: nothing else comes but that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- running one problem ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """A solved problem: the trace (with its cost), the setting that ran, and the policy's plan if any."""

    trace: Trace
    setting: dict[str, Any]
    plan: Any = None
    seed: int = 0


def check_limits(settings: ServeSettings, values: dict[str, Any], param: dict[str, str], chosen_by: str | None = None) -> None:
    """400 for a compute-bearing option above the server's limit, naming where it came from
    (ttscale.n, X-TTS-Strategy, model, ttscale.options.KEY, or the budget the policy chose it for)."""
    for key, value in values.items():
        if key not in LIMITED or not isinstance(value, int) or isinstance(value, bool):
            continue
        limit = getattr(settings, LIMITED[key])
        if value > limit:
            where = chosen_by or param.get(key, param.get("options", f"ttscale.options.{key}"))
            what = f"the policy chose {key}={value} for this budget" if chosen_by else f"{key}={value}"
            raise bad_request(f"{where}: {what} is above this server's limit of {limit} ({LIMITED[key]}; the server's "
                              f"{FLAGS[LIMITED[key]]} raises it); lower it", where)


def prepare(state: ServerState, resolved: Resolved, params: SampleParams, choices: int) -> tuple[Any, dict[str, Any], Any]:
    """Validate a strategy request before anything runs: (strategy object, options, verifier)."""
    name = resolved.strategy
    options = dict(resolved.options)
    if resolved.n_from_default and "n" in options and choices > options["n"]:
        options["n"] = choices  # a plain request for n choices draws at least n samples
    strategy, wants_verifier, samples = state.strategy(name, options, resolved.param)
    check_limits(state.settings, {**{key: getattr(strategy, key, None) for key in LIMITED}, "n": samples}, resolved.param)
    if options.get("selection") == ORACLE_RULE or getattr(strategy, "selection", None) == ORACLE_RULE:
        raise bad_request("selection 'oracle' needs gold answers, and a request has none; use majority, first, "
                          "max-score, weighted-vote or borda-vote", resolved.param.get("selection", "ttscale.selection"))
    if params.stop and name not in STOP_HONOURED:
        raise bad_request(f"stop cannot be honoured by {name!r}: it ends steps with its own stop strings; drop stop", "stop")
    verifier = state.verifier(resolved.verifier, resolved.param.get("verifier", "ttscale.verifier"))
    if verifier is None and wants_verifier:
        raise bad_request(f"strategy {name!r} with options {options} needs a verifier; pass ttscale.verifier "
                          "(e.g. llm-judge-prm)", "ttscale.verifier")
    if choices > samples:
        raise bad_request(f"n={choices} choices, but {name!r} returns at most {samples} candidates; raise ttscale.n or lower n", "n")
    return strategy, options, verifier


async def run_strategy(state: ServerState, problem: Problem, resolved: Resolved, options: dict[str, Any], verifier: Any,
                       params: SampleParams, seed: int, sink: AnswerText | None = None) -> Outcome:
    """Solve with the named strategy through ttscale.solve (the CostMeters fill Trace.cost);
    a single-sample answer's text goes to `sink` as it is generated (see text_backend)."""
    backend = text_backend(state, state.strategy(resolved.strategy, options, resolved.param)[0], sink)
    async with state.slots:
        trace = await solve(problem, backend=backend, strategy=resolved.strategy, options=options, verifier=verifier,
                            answers=state.answers, params=params, seed=seed)
    setting = {"strategy": resolved.strategy, "options": options, "verifier": resolved.verifier, "selection": trace.chosen_rule}
    return Outcome(trace, setting, None, seed)


def check_policy_sampling(state: ServerState, body: CommonBody) -> None:
    """Under the policy, the sampling is the one it was fitted with: a different value is refused."""
    fitted = state.policy.sampling
    asked = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": body.requested_max_tokens(), "stop": body.stop_strings()}
    for name in body.sampling_extras():  # the policy's settings were fitted without them
        raise bad_request(f"{name}: the policy runs with the sampling it was fitted with; drop it, or name a strategy "
                          "instead of a budget", name)
    for name, value in asked.items():
        if value is None or (name == "stop" and not value):
            continue
        have = tuple(fitted.stop) if name == "stop" else getattr(fitted, name)
        if (tuple(value) if name == "stop" else value) != have:
            raise bad_request(f"{name}={value!r}: the policy runs with the sampling it was fitted with ({name}={have!r}); "
                              "drop it, or name a strategy instead of a budget", name)


async def run_policy(state: ServerState, prompt: str | Problem, resolved: Resolved, seed: int,
                     sink: AnswerText | None = None) -> Outcome:
    """Allocate the budget for this prompt (the probe runs where it pays), then run the plan; where
    it chose a single sample, its text goes to `sink` as it is generated (see text_backend)."""
    policy = state.policy
    answers = state.policy_answers
    probe_verifier = state.verifier(policy.probe.verifier, "budget", answers) if policy.probe.statistic == "verifier" else None
    async with state.slots:
        plan = await policy.allocate_async(prompt, state.backend, budget_flops=resolved.budget_flops,
                                           budget_samples=resolved.budget_samples, verifier=probe_verifier,
                                           probe_backend=state.probe_backend)
        budget = resolved.param["budget_flops" if resolved.budget_flops is not None else "budget_samples"]
        check_limits(state.settings, {**plan.setting.options, "n": plan.setting.samples}, {}, chosen_by=budget)
        verifier = state.verifier(plan.setting.verifier, "budget", answers) if plan.setting.verifier else None
        chosen = state.strategy(plan.setting.strategy, dict(plan.setting.options), {})[0]
        trace = await plan.run(text_backend(state, chosen, sink), verifier, seed=seed)
    setting = {"strategy": plan.setting.strategy, "options": dict(plan.setting.options), "verifier": plan.setting.verifier,
               "selection": trace.chosen_rule}
    return Outcome(trace, setting, plan, seed)


def ranked_candidates(trace: Trace, equivalent: Any) -> list[Candidate]:
    """The chosen candidate first, then the others: by verifier score where scored, else by how
    many candidates share their answer; ties keep draw order."""
    candidates = list(trace.candidates)
    if not candidates:
        return []
    chosen_answer = trace.answer
    classes = answer_classes([c.answer for c in candidates], equivalent)
    votes = {cls: int((classes == cls).sum()) for cls in set(classes.tolist()) if cls >= 0}
    chosen = next((i for i, c in enumerate(candidates) if chosen_answer is not None and c.answer is not None
                   and (c.answer == chosen_answer or equivalent(c.answer, chosen_answer))), 0)

    def key(i: int) -> tuple:
        c = candidates[i]
        return (i != chosen, -(c.score if c.score is not None else -math.inf), -votes.get(int(classes[i]), 0), i)

    return [candidates[i] for i in sorted(range(len(candidates)), key=key)]


def usage_of(costs: Sequence[Any]) -> dict[str, Any]:
    """OpenAI's usage from Trace.cost: every token spent, the verifier's in verifier_tokens and total_tokens."""
    prompt = sum(c.prompt_tokens for c in costs)
    completion = sum(c.generated_tokens for c in costs)
    verifier = sum(c.verifier_tokens for c in costs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + verifier,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_prompt_tokens for c in costs)},
        "verifier_tokens": verifier,
    }


def ttscale_block(outcomes: Sequence[Outcome], resolved: Resolved, want_candidates: bool, equivalent: Any) -> dict[str, Any]:
    """The response's `ttscale` block: setting, FLOPs, verifier spend, engine calls, policy bin and budget."""
    cost = sum_costs([o.trace.cost for o in outcomes])
    first = outcomes[0]
    block: dict[str, Any] = {
        "source": resolved.source,
        "strategy": first.setting["strategy"],
        "options": first.setting["options"],
        "selection": first.setting["selection"],
        "verifier": first.setting["verifier"],
        "seed": first.seed,
        "flops": cost.flops,
        "eflops": cost.eflops,
        "structural_flops": cost.structural_flops,
        "verifier_calls": cost.verifier_calls,
        "verifier_tokens": cost.verifier_tokens,
        "verifier_flops": cost.verifier_flops,
        "engine_calls": cost.calls + cost.verifier_calls,
        "cost_known": cost.uncounted_calls == 0,
        "wall_s": cost.wall_s,
        "cost": cost.model_dump(),
    }
    if first.plan is not None:
        plans = []
        for outcome in outcomes:
            plan = outcome.plan
            plans.append({"bin": plan.bin, "bin_source": plan.bin_source, "setting": plan.describe(),
                          "expected_accuracy": plan.entry.accuracy, "budget": outcome.trace.metadata.get("budget")})
        block["policy"] = {"budget_flops": resolved.budget_flops, "budget_samples": resolved.budget_samples, **plans[0]}
        if len(plans) > 1:
            block["policy"]["prompts"] = plans
    if len(outcomes) > 1:
        block["prompts"] = [{**o.setting, "cost": o.trace.cost.model_dump()} for o in outcomes]
    if want_candidates:
        block["candidates"] = [[c.model_dump() for c in o.trace.candidates] for o in outcomes] if len(outcomes) > 1 \
            else [c.model_dump() for c in first.trace.candidates]
        block["selections"] = first.trace.selections
    return block


def completion_response(body: CommonBody, outcomes: list[Outcome], resolved: Resolved, choices: int, kind: str, equivalent: Any) -> dict[str, Any]:
    """The completion object: the top `choices` candidates of each prompt, usage and the ttscale block."""
    want_candidates = bool(body.ttscale and body.ttscale.candidates)
    items = []
    for p, outcome in enumerate(outcomes):
        for j, candidate in enumerate(ranked_candidates(outcome.trace, equivalent)[:choices]):
            index = p * choices + j
            if kind == "chat":
                items.append({"index": index, "message": {"role": "assistant", "content": candidate.text},
                              "finish_reason": candidate.finish_reason, "logprobs": None})
            else:
                items.append({"index": index, "text": candidate.text, "finish_reason": candidate.finish_reason, "logprobs": None})
    return {
        "id": ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": None,
        "choices": items,
        "usage": usage_of([o.trace.cost for o in outcomes]),
        "ttscale": ttscale_block(outcomes, resolved, want_candidates, equivalent),
    }


# --- the answer's text as it is generated -------------------------------------------------------


def one_sample_answers(strategy: Any) -> bool:
    """Whether a strategy's answer is the one sample it draws, as generated (best-of-n with n=1):
    its text can then go to the client while it is being generated."""
    return getattr(strategy, "name", None) == "best-of-n" and samples_per_problem(strategy) == 1


class TextTee:
    """The backend a streamed single-sample request runs on: its one sample goes through the
    backend's generate_streaming, each new piece of text to `on_text` as the engine makes it.
    Every other call, and every other attribute (model, prompt_token_ids, ...), is the backend's."""

    def __init__(self, backend: Any, on_text: Any):
        self._backend, self._on_text, self._used = backend, on_text, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def generate(self, requests: Sequence[Any]) -> list[Any]:
        if not self._used and len(requests) == 1 and requests[0].params.n == 1:
            self._used = True
            return [await self._backend.generate_streaming(requests[0], self._on_text)]
        return await self._backend.generate(requests)


@dataclass
class AnswerText:
    """A streamed request's answer text as it is generated: the pieces (None ends them), and
    whether a sample is streaming live (then its tokens set the pace, and no keep-alive is sent)."""

    pieces: "asyncio.Queue[str | None]" = field(default_factory=asyncio.Queue)
    live: bool = False


def text_backend(state: ServerState, strategy: Any, sink: AnswerText | None) -> Any:
    """The backend to solve on: a TextTee into `sink` where the request streams and the answer is
    one sample the backend can stream; else the server's backend."""
    if sink is None or not one_sample_answers(strategy) or not streams_text(state.backend):
        return state.backend
    sink.live = True
    return TextTee(state.backend, sink.pieces.put_nowait)
