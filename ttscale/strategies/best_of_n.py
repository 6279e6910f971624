"""Best-of-N: draw N samples in one request, then pick an answer by a selection rule.

    samples = LLM(prompt, n=N)                      # sample i is seeded seed + i (vLLM)
    answers = [extract(s) for s in samples]
    scores  = [scorer(s) for s in samples]          # a verifier (ORM, or PRM step scores aggregated),
                                                    # or the sample's own logprobs (no verifier)
    return select(answers, scores)   # majority | first | max-score | weighted-vote | borda-vote | oracle
                                     # | random | pass-examples | behaviour-vote (code)
                                     # | codet | test-vote | test-vote-judge | behaviour-vote-generated

max-score is "ORM/PRM best-of-N"; weighted-vote sums the scores of equivalent answers (Snell et
al.'s "best-of-N weighted"); borda-vote is Kang et al.'s vote (`borda_vote`): the sample ranked r-th
of N by score gives its answer (N - r)^p, p = 0.5. With borda-vote a verifier scores each whole
sample, its exact text (`Verifier.score`: a PRM's last step), as the paper scores samples; the
other rules aggregate its step scores. The oracle rule ("any of the N is correct", i.e.
coverage) needs the gold answer, so the runner applies it when grading; the strategy never sees
gold answers.

Scorers (`-S scorer=...`): "verifier" (default) asks the run's verifier. The others need no
verifier model and read no gold: they are computed from the sample's own top-k logprobs
(`-S logprobs=K`, ttscale.confidence), so `--selection weighted-vote -S scorer=deepconf-tail
-S logprobs=10` is deployable as it stands:

- mean-logprob: exp(mean token logprob), the geometric mean of the sampled tokens' probabilities
  (monotone in the mean logprob, so max-score picks the same sample; positive, so it can weight
  a vote);
- topk-certainty: the mean over tokens of C_i - log k (>= 0), KL from uniform of the top-k only.
  It ranks samples exactly as deepconf-mean does, and it is not Kang et al.'s self-certainty:
  that reads the full vocabulary, so it is a verifier (`--verifier self-certainty -V model=M`,
  ttscale/verifiers/self_certainty.py; then `--selection borda-vote` is the paper's method);
- deepconf-lowest-group, deepconf-bottom-10, deepconf-tail, deepconf-mean (Fu et al. 2025):
  DeepConf's trace confidences over windows of `window` tokens (deepconf-tail: the last `tail`).

The scorer's name is recorded as trace metadata "scorer", so nobody reads a confidence as a
verifier's score.

Code rules (docs/code.md): on a code benchmark, `--selection pass-examples` or `behaviour-vote`
runs every sample's program on the problem's visible tests, the examples its prompt shows
(ttscale.code_tests; never the hidden ones), one sandboxed process per sample
(ttscale.code_exec). pass-examples takes the first sample that passes them all; behaviour-vote
clusters samples by their outputs on the visible inputs and takes the first of the largest
cluster (`-S filter=visible`: only samples that pass join a cluster). Both fall back to the
first sample. Each sample's results and the problem's execution seconds are recorded as trace
metadata "code_exec" and "execution", so every code rule can be recomputed from the record.
`random` is the seeded baseline.

Model-written tests (docs/code.md, ttscale.generated_tests): `--selection codet` also asks the
model for tests with CodeT's completion prompt (`test_samples` samples, up to 5 asserts each),
runs every sample's program on every well-formed one, and records codet (CodeT's consensus sets
scored (samples) x (tests passed)) and test-vote (the most tests passed). `test-vote-judge`
(CodeMonkeys) also shows the `judge_candidates` top voters to the model and takes the one it
names (fallback: the top voter). Each also records behaviour-vote-generated: AlphaCode's
clustering on the visible inputs plus the generated tests' inputs (their calls; the values they
expect play no part), `-S filter=visible` as for behaviour-vote. Both calls go through the problem's meter; their cost is also
recorded apart as trace metadata "selection_cost" (a per-problem cost that does not shrink with
fewer samples), the tests, pass matrix and judge's choice as "generated_tests".
"""

from __future__ import annotations

import asyncio
import math
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ttscale.code_exec import EXECUTION, CandidateExec, code_arrays, exec_metadata, execute_async
from ttscale.code_tests import ENTRY_POINT
from ttscale.confidence import DEFAULT_TAIL, DEFAULT_WINDOW, mean_logprob, token_confidences, topk_certainty, trace_score
from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.generated_tests import (
    GENERATED_TESTS, JUDGE_MAX_TOKENS, SELECTION_COST, STOP, TEST_MAX_TOKENS, TEST_SAMPLES, collect, judge_prompt,
    codet_prompt, combined_behaviour, parse_choice, pass_matrix, run_generated, generated_metadata,
)
from ttscale.errors import ConfigError
from ttscale.selection import (
    BORDA_POWER, CODE_RULES, GENERATED_BEHAVIOUR_RULE, JUDGE_RULE, TEST_RULES, VERIFIER_RULES, answer_classes, chosen_positions, execution_pick,
    first_answer, majority_vote, max_score, random_answer, tests_pick, vote_finalists, weighted_vote,
)
from ttscale.types import Candidate, Completion, GenRequest, Problem, Trace
from ttscale.steps import Aggregation, aggregate, split_steps

Scorer = Literal[
    "verifier", "mean-logprob", "topk-certainty",
    "deepconf-lowest-group", "deepconf-bottom-10", "deepconf-tail", "deepconf-mean",
]


def sample_candidates(completions: Sequence[Completion], ctx: SolveContext, logprobs: int | None) -> list[Candidate]:
    """Candidates of sampled completions: the extracted answer, and with top-k logprobs asked
    for, each token's DeepConf confidence and the sample's mean logprob."""
    return [
        Candidate(
            text=c.text,
            answer=ctx.answers.extract_answer(c.text),
            num_tokens=c.num_tokens,
            finish_reason=c.finish_reason,
            token_confidences=token_confidences(c, logprobs) if logprobs else None,
            mean_logprob=mean_logprob(c) if logprobs else None,
        )
        for c in completions
    ]


def confidence_score(candidate: Candidate, scorer: str, *, k: int, window: int = DEFAULT_WINDOW,
                     tail: int = DEFAULT_TAIL) -> float | None:
    """A verifier-free score of one candidate from its own logprobs (None when it has none)."""
    if scorer == "mean-logprob":
        return None if candidate.mean_logprob is None else math.exp(candidate.mean_logprob)
    if candidate.token_confidences is None:
        return None
    if scorer == "topk-certainty":
        return topk_certainty(candidate.token_confidences, k)
    if scorer.startswith("deepconf-"):
        return trace_score(candidate.token_confidences, scorer.removeprefix("deepconf-"), window, tail)
    raise ValueError(f"unknown scorer {scorer!r}")


def borda_vote(candidates: Sequence[Candidate], equivalent, power: float = BORDA_POWER) -> str | None:
    """Kang et al.'s Borda vote (src/voting_from_list.py lines 37-71): sum the Borda weights
    (ttscale.selection.borda_weights) of the candidates per equivalent answer and pick the largest
    total; ties go to the answer seen first (lines 70-71: `index` of the maximum)."""
    if not candidates:
        return None
    classes = answer_classes([c.answer for c in candidates], equivalent)
    scores = np.asarray([np.nan if c.score is None else float(c.score) for c in candidates])
    position = int(chosen_positions("borda-vote", classes, scores, np.arange(len(candidates))[None, :], borda_power=power)[0])
    return candidates[position].answer if position >= 0 else None


class BestOfN(BaseModel):
    """N parallel samples; selection by majority vote, first sample, max score or weighted vote,
    scored by a verifier or by the samples' own confidence."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "best-of-n"

    n: int = Field(default=8, ge=1, description="N: the number of samples drawn for one problem")
    selection: Literal[
        "majority", "first", "max-score", "weighted-vote", "borda-vote", "oracle", "random", "pass-examples", "behaviour-vote",
        "codet", "test-vote", "test-vote-judge", "behaviour-vote-generated",
    ] = "majority"
    aggregation: Aggregation = Field(default="last", description="how a PRM's step scores become one score")
    logprobs: int | None = Field(
        default=None, ge=1, le=20,
        description="k: record each token's confidence from its top-k logprobs (DeepConf), and each sample's mean logprob",
    )
    scorer: Scorer = Field(
        default="verifier",
        description="what scores samples for max-score, weighted-vote and borda-vote: the verifier, or (no verifier) "
        "mean-logprob, topk-certainty or a DeepConf trace confidence, read from the sample's own logprobs (needs logprobs=K)",
    )
    window: int = Field(default=DEFAULT_WINDOW, ge=1, description="tokens per group for the deepconf-* scorers")
    tail: int = Field(default=DEFAULT_TAIL, ge=1, description="deepconf-tail: the last this many tokens (set apart from window)")
    borda_power: float = Field(default=BORDA_POWER, gt=0, description="borda-vote: rank r of N gives (N - r)^p (Kang et al.: 0.5)")
    filter: Literal["none", "visible"] = Field(
        default="none", description="behaviour-vote(-generated): 'visible' clusters only the samples that pass every visible test",
    )
    test_timeout_s: float = Field(default=2.0, gt=0, le=60, description="code rules: the wall clock of one visible test")
    test_samples: int = Field(default=TEST_SAMPLES, ge=1, description="codet, test-vote(-judge): test-writing samples "
                              "asked of the model (CodeT: 100), up to 5 asserts each")
    generated_test_timeout_s: float = Field(default=0.5, gt=0, le=60, description="the wall clock of one model-written test")
    judge_candidates: int = Field(default=3, ge=2, description="test-vote-judge: the top voters shown to the judge")

    @field_validator("scorer", mode="before")
    @classmethod
    def _renamed_scorer(cls, value: object) -> object:
        if value == "self-certainty":
            raise ValueError("scorer 'self-certainty' was a top-k proxy and is now named 'topk-certainty' (it ranks as "
                             "deepconf-mean does); Kang et al.'s self-certainty reads the full vocabulary: "
                             "--verifier self-certainty -V model=MODEL --selection borda-vote")
        return value

    @model_validator(mode="after")
    def _options_fit(self) -> "BestOfN":
        if self.scorer != "verifier" and self.logprobs is None:
            raise ValueError(f"scorer {self.scorer!r} reads the samples' top-k logprobs; add -S logprobs=10")
        if self.selection == "borda-vote" and self.scorer == "verifier" and self.aggregation != "last":
            raise ValueError("borda-vote ranks whole samples by the verifier's outcome score (a PRM's last step); "
                             f"aggregation {self.aggregation!r} does not apply")
        return self

    @property
    def needs_verifier(self) -> bool:
        """Whether the chosen rule needs a verifier (the runner checks before starting)."""
        return self.selection in VERIFIER_RULES and self.scorer == "verifier"

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Sample N completions of the problem's prompt and apply every selection rule."""
        if self.needs_verifier:
            ctx.require_verifier(f"{self.name} --selection {self.selection}")
            if self.selection == "borda-vote" and ctx.verifier.uses_gold:
                raise ConfigError(f"--selection borda-vote ranks deployable scores; verifier {ctx.verifier.name!r} reads gold answers")
        params = ctx.params.model_copy(update={"n": self.n, "logprobs": self.logprobs})
        sampling = ctx.backend.generate([GenRequest(prompt=problem.prompt, params=params)])
        writes_tests = self.selection in TEST_RULES or self.selection in (JUDGE_RULE, GENERATED_BEHAVIOUR_RULE)
        # the rule's own calls (tests, judge) through a meter of their own inside the problem's,
        # so their cost is known apart: it is per problem, not per sample
        rule_meter = CostMeter(ctx.backend)
        if writes_tests:
            [generation], test_texts = await asyncio.gather(sampling, self._write_tests(problem, ctx, rule_meter))
        else:
            [generation] = await sampling
        candidates = sample_candidates(generation.completions, ctx, self.logprobs)
        selections = {
            "majority": majority_vote(candidates, ctx.answers.equivalent),
            "first": first_answer(candidates),
        }
        metadata = {}
        if self.scorer != "verifier":
            scores = [confidence_score(c, self.scorer, k=self.logprobs, window=self.window, tail=self.tail) for c in candidates]
            candidates = [c.model_copy(update={"score": s}) for c, s in zip(candidates, scores)]
            metadata["scorer"] = self.scorer  # Candidate.score is the sample's own confidence, not a verifier's
        elif ctx.verifier is not None and self.selection == "borda-vote":
            # Kang et al. score whole samples: the verifier's outcome score of each exact text (a PRM's last step)
            scores = await ctx.verifier.score([c.text for c in candidates])
            candidates = [c.model_copy(update={"score": s}) for c, s in zip(candidates, scores)]
            metadata["scorer"] = "verifier"
        elif ctx.verifier is not None:
            step_scores = await ctx.verifier.score_steps([split_steps(c.text) for c in candidates])
            candidates = [
                c.model_copy(update={"score": aggregate(s, self.aggregation), "step_scores": tuple(s)})
                for c, s in zip(candidates, step_scores)
            ]
            metadata["scorer"] = "verifier"
        if metadata:
            selections["max-score"] = max_score(candidates)
            selections["weighted-vote"] = weighted_vote(candidates, ctx.answers.equivalent)
        if metadata and self.selection == "borda-vote":  # recorded only when asked for, so other runs' records keep their rules
            selections["borda-vote"] = borda_vote(candidates, ctx.answers.equivalent, self.borda_power)
        if self.selection in CODE_RULES or self.selection == "random" or writes_tests:  # likewise
            selections["random"] = random_answer(candidates, np.random.default_rng(ctx.rng.getrandbits(64)))
        if self.selection in CODE_RULES or writes_tests:
            results = await execute_async(problem, [c.answer for c in candidates], test_timeout_s=self.test_timeout_s)
            metadata.update(exec_metadata(results), behaviour_filter=self.filter)
            passed, behaviour = code_arrays(results, filter_visible=self.filter == "visible")
            for rule in sorted(CODE_RULES):
                selections[rule] = execution_pick(rule, candidates, passed, behaviour)
        if writes_tests:
            selections.update(await self._test_rules(problem, ctx, rule_meter, candidates, test_texts, results, metadata))
        return Trace(candidates=tuple(candidates), selections=selections, chosen_rule=self.selection, metadata=metadata)

    async def _write_tests(self, problem: Problem, ctx: SolveContext, meter: CostMeter) -> list[str]:
        """CodeT's test-writing samples (ttscale.generated_tests.codet_prompt), metered."""
        prompt = codet_prompt(problem)
        if prompt is None:
            return []
        params = ctx.params.model_copy(update={"n": self.test_samples, "max_tokens": TEST_MAX_TOKENS, "stop": STOP,
                                               "logprobs": None, "include_stop_str": False})
        [generation] = await meter.generate([GenRequest(prompt=prompt, params=params)])
        return [c.text for c in generation.completions]

    async def _test_rules(self, problem: Problem, ctx: SolveContext, meter: CostMeter, candidates: list[Candidate],
                          test_texts: list[str], visible: list[CandidateExec], metadata: dict) -> dict[str, str | None]:
        """Run every candidate on the model-written tests; codet, test-vote, behaviour-vote-generated
        and (asked for) the judge."""
        tests = collect(test_texts, problem.metadata.get(ENTRY_POINT, ""))
        results = await asyncio.to_thread(run_generated, problem, [c.answer for c in candidates], tests,
                                          test_timeout_s=self.generated_test_timeout_s)
        matrix, counts = pass_matrix(results, len(tests.tests)), np.asarray(tests.counts, dtype=np.float64)
        picks = {rule: tests_pick(rule, candidates, matrix, counts) for rule in sorted(TEST_RULES)}
        generated_behaviour = combined_behaviour(visible, [r.signature for r in results],
                                                 filter_visible=self.filter == "visible")
        picks[GENERATED_BEHAVIOUR_RULE] = execution_pick(GENERATED_BEHAVIOUR_RULE, candidates,
                                                         generated_behaviour=generated_behaviour)
        judge = {}
        if self.selection == JUDGE_RULE:
            picks[JUDGE_RULE], judge = await self._judge(problem, ctx, meter, candidates, matrix, counts)
        execution = {key: sum(getattr(r, key) for r in results) for key in ("runs", "cpu_s", "wall_s")}
        metadata[GENERATED_TESTS] = generated_metadata(tests, test_texts, results, execution=execution, judge=judge or None)
        totals = metadata.get(EXECUTION, {"runs": 0, "cpu_s": 0.0, "wall_s": 0.0})
        metadata[EXECUTION] = {key: totals[key] + execution[key] for key in execution}  # visible and generated runs
        metadata[SELECTION_COST] = meter.cost.model_dump()
        return picks

    async def _judge(self, problem: Problem, ctx: SolveContext, meter: CostMeter, candidates: list[Candidate],
                     matrix: np.ndarray, counts: np.ndarray) -> tuple[str | None, dict]:
        """CodeMonkeys' selection: the top voters shown to the model, which names one (fallback: the top voter)."""
        finalists = vote_finalists(candidates, matrix, counts, self.judge_candidates)
        if not finalists:
            return None, {"finalists": [], "choice": None}
        if len(finalists) == 1:  # one distinct program: nothing to judge, no call
            return candidates[finalists[0]].answer, {"finalists": finalists, "choice": 0, "text": None}
        params = ctx.params.model_copy(update={"n": 1, "temperature": 0.0, "max_tokens": JUDGE_MAX_TOKENS,
                                               "logprobs": None, "stop": ()})
        prompt = judge_prompt(problem, [candidates[i].answer for i in finalists])
        [generation] = await meter.generate([GenRequest(prompt=prompt, params=params)])
        text = generation.completions[0].text if generation.completions else ""
        choice = parse_choice(text, len(finalists))
        picked = finalists[0 if choice is None else choice]
        return candidates[picked].answer, {"finalists": finalists, "choice": choice, "text": text, "picked": picked}
