"""Sequential revision on the fake backend: chains and contexts, selection, cost, per-depth summary."""

import asyncio
import json

import pytest

from ttscale.analysis.revision import revision_summary
from ttscale.backends.fake import FakeBackend, fake_tokens, render_prompt
from ttscale.config import RunConfig
from ttscale.context import AnswerView, SolveContext, VerifierView
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.runner import run_eval
from ttscale.strategies.revision import DEFAULT_TEMPLATE, Revision, hierarchical_vote
from ttscale.types import Candidate, ChatMessage, Problem, SampleParams

BASE_SEED = 1000
PROBLEM = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="Solve: What is 2 + 3?"),))


class SeedScript(FakeBackend):
    """Attempt i of the strategy (seed BASE_SEED + chain * L + depth) answers texts[i]."""

    def __init__(self, texts, **kwargs):
        super().__init__(**kwargs)
        self.texts = texts

    def _raw_text(self, request, prompt, index):
        return self.texts[request.params.seed - BASE_SEED]


class Answers:
    """Answer tools of a toy domain: the last \\boxed{...}, compared as strings."""

    def extract_answer(self, text):
        return text.rsplit("\\boxed{", 1)[1].split("}")[0] if "\\boxed{" in text else None

    def equivalent(self, a, b):
        return a == b


class ScoreInText:
    """A verifier that reads each step's score from the text: 'score 0.3' gives 0.3, else 0."""

    name, uses_gold, backend = "score-in-text", False, None

    async def score(self, problem, solutions, meter):
        raise AssertionError("revision scores steps")

    async def score_steps(self, problem, steps, meter):
        return [[float(step.split("score ")[1].split()[0]) if "score " in step else 0.0 for step in solution]
                for solution in steps]

    async def close(self):
        pass


def attempt(answer, score=0.5):
    return f"I think it is {answer}.\n\nscore {score} so \\boxed{{{answer}}}"


def context(backend, verifier=None):
    meter = CostMeter(backend)
    view = VerifierView(verifier, PROBLEM, CostMeter(backend, role="verifier")) if verifier else None
    return SolveContext(backend=meter, answers=AnswerView(Answers()), params=SampleParams(seed=BASE_SEED), verifier=view)


def user_content(request):
    return request.prompt[-1].content


# --- options ---------------------------------------------------------------------------------


def test_ratio_must_split_n_exactly():
    assert Revision(n=8, ratio="4:2").shape == (4, 2)
    assert Revision(n=8).shape == (8, 1)  # default: one chain
    with pytest.raises(ValueError, match=r"ratio 4:3 means 3 chains of 4 = 12 attempts, but n is 8; pass --n 12"):
        Revision(n=8, ratio="4:3")
    with pytest.raises(ValueError, match="expected L:CHAINS"):
        Revision(n=8, ratio="four:2")
    with pytest.raises(ValueError, match="expected L:CHAINS"):
        Revision(n=8, ratio="8:0")


def test_template_must_use_both_placeholders():
    with pytest.raises(ValueError, match=r"\{question\} and \{attempts\}, found \['question'\]"):
        Revision(template="Try again: {question}")
    with pytest.raises(ValueError, match="found.*'answer'"):
        Revision(template="{question} {attempts} {answer}")
    Revision(template="Q: {question}\nPrevious: {attempts}\nAgain, with {{braces}}.")


def test_cli_error_names_the_ratio(tmp_path):
    config = RunConfig(benchmark="arithmetic", backend="fake", strategy="revision", output=tmp_path,
                       strategy_options={"n": 8, "ratio": "4:4"})
    with pytest.raises(ConfigError, match="strategy 'revision'.*ratio 4:4 means 4 chains of 4 = 16 attempts, but n is 8"):
        asyncio.run(run_eval(config))


# --- chains and contexts -----------------------------------------------------------------------


async def test_ratio_1_to_n_is_n_independent_first_attempts():
    backend = SeedScript([attempt(a) for a in "1234"])
    trace = await Revision(n=4, ratio="1:4").solve(PROBLEM, context(backend))
    assert [r.prompt for r in backend.requests] == [PROBLEM.prompt] * 4  # nobody revises
    assert sorted(r.params.seed for r in backend.requests) == [1000, 1001, 1002, 1003]  # distinct samples
    assert [c.answer for c in trace.candidates] == ["1", "2", "3", "4"]
    assert trace.metadata["chain"] == [0, 1, 2, 3] and trace.metadata["depth"] == [1, 1, 1, 1]


async def test_ratio_n_to_1_is_one_chain_seeing_its_last_k_attempts():
    texts = [attempt(a) for a in "12345"]
    backend = SeedScript(texts)
    trace = await Revision(n=5, ratio="5:1", history=2).solve(PROBLEM, context(backend))
    requests = backend.requests
    assert requests[0].prompt == PROBLEM.prompt
    expected = {
        1: ["Attempt 1:\n" + texts[0].strip()],
        2: ["Attempt 1:\n" + texts[0].strip(), "Attempt 2:\n" + texts[1].strip()],
        3: ["Attempt 1:\n" + texts[1].strip(), "Attempt 2:\n" + texts[2].strip()],  # window of k = 2 slides
        4: ["Attempt 1:\n" + texts[2].strip(), "Attempt 2:\n" + texts[3].strip()],
    }
    for depth, blocks in expected.items():
        assert user_content(requests[depth]) == DEFAULT_TEMPLATE.format(
            question="Solve: What is 2 + 3?", attempts="\n\n".join(blocks)
        )
    assert trace.metadata["depth"] == [1, 2, 3, 4, 5] and trace.metadata["chain"] == [0] * 5


async def test_mixed_ratio_chains_revise_only_their_own_attempts():
    # Chain 0 answers 1, 2; chain 1 answers 7, 8.
    texts = [attempt("1"), attempt("2"), attempt("7"), attempt("8")]
    backend = SeedScript(texts)
    trace = await Revision(n=4, ratio="2:2").solve(PROBLEM, context(backend))
    by_seed = {r.params.seed: r for r in backend.requests}
    assert by_seed[1001].prompt[-1].content.count("Attempt 1:") == 1 and "\\boxed{1}" in user_content(by_seed[1001])
    assert "\\boxed{7}" not in user_content(by_seed[1001])
    assert "\\boxed{7}" in user_content(by_seed[1003]) and "\\boxed{1}" not in user_content(by_seed[1003])
    assert [c.answer for c in trace.candidates] == ["1", "2", "7", "8"]
    assert trace.metadata["chain"] == [0, 0, 1, 1] and trace.metadata["depth"] == [1, 2, 1, 2]


async def test_custom_template_and_system_prompt_are_kept():
    problem = PROBLEM.model_copy(update={"prompt": (ChatMessage(role="system", content="Be brief."), *PROBLEM.prompt)})
    backend = SeedScript([attempt("1"), attempt("2")])
    await Revision(n=2, template="Q: {question}\nBefore: {attempts}\nAgain.").solve(problem, context(backend))
    revision = backend.requests[1].prompt
    assert revision[0] == ChatMessage(role="system", content="Be brief.")
    assert revision[1].content == f"Q: Solve: What is 2 + 3?\nBefore: Attempt 1:\n{attempt('1')}\nAgain."


# --- cost ------------------------------------------------------------------------------------


async def test_cost_counts_every_prompt_of_the_growing_context_including_the_cached_part():
    backend = SeedScript([attempt(a) for a in "1234"], num_params=10, block_size=4)
    ctx = context(backend)
    trace = await Revision(n=4, ratio="4:1").solve(PROBLEM, ctx)
    prompts = [len(fake_tokens(render_prompt(r))) for r in backend.requests]
    assert prompts[1] < prompts[2] < prompts[3]  # the context grows with every attempt
    generated = sum(c.num_tokens for c in trace.candidates)
    cost = ctx.backend.cost
    assert cost.calls == 4
    assert cost.prompt_tokens == sum(prompts)
    assert cost.generated_tokens == generated == 4 * len(fake_tokens(attempt("1")))
    # Each revision prompt extends the previous one, so the fake's block cache serves its head.
    assert cost.cached_prompt_tokens > 0
    # Per-depth meters split the same total.
    depth_cost = trace.metadata["depth_cost"]
    assert [d["calls"] for d in depth_cost] == [1, 1, 1, 1]
    assert [d["prompt_tokens"] for d in depth_cost] == prompts
    for name in ("prompt_tokens", "cached_prompt_tokens", "generated_tokens"):
        assert sum(d[name] for d in depth_cost) == getattr(cost, name)
    assert sum(d["flops"] for d in depth_cost) == pytest.approx(cost.flops)


# --- selection -------------------------------------------------------------------------------


def scored(answer, score):
    return Candidate(text="", answer=answer, num_tokens=1, finish_reason="stop", score=score)


def test_hierarchical_vote_picks_within_chains_then_across():
    # Flat weighted vote over all eight would pick 5 (0.8 + 0.9 = 1.7) and majority 2 (three
    # votes, tied with 1 and seen first); within chains 2 (0.9) and 1 (1.05) win, then 1 does.
    chains = [
        [scored("2", 0.3), scored("2", 0.3), scored("2", 0.3), scored("5", 0.8)],
        [scored("5", 0.9), scored("1", 0.35), scored("1", 0.35), scored("1", 0.35)],
    ]
    assert hierarchical_vote(chains, str.__eq__) == "1"
    assert hierarchical_vote([[scored(None, 1.0)]], str.__eq__) is None


async def test_solve_selects_hierarchically_with_a_verifier_and_by_majority_without():
    answers_scores = [("2", 0.3), ("2", 0.3), ("2", 0.3), ("5", 0.8), ("5", 0.9), ("1", 0.35), ("1", 0.35), ("1", 0.35)]
    texts = [attempt(a, s) for a, s in answers_scores]
    with_verifier = await Revision(n=8, ratio="4:2").solve(PROBLEM, context(SeedScript(texts), ScoreInText()))
    assert with_verifier.chosen_rule == "hierarchical"
    assert with_verifier.selections == {"hierarchical": "1", "majority": "2", "first": "2"}
    assert [c.score for c in with_verifier.candidates] == [s for _, s in answers_scores]

    without = await Revision(n=8, ratio="4:2").solve(PROBLEM, context(SeedScript(texts)))
    assert without.chosen_rule == "majority" and without.selections == {"majority": "2", "first": "2"}
    assert all(c.score is None for c in without.candidates)

    with pytest.raises((ValueError, ConfigError), match="'revision --selection hierarchical' needs a verifier"):
        await Revision(n=8, ratio="4:2", selection="hierarchical").solve(PROBLEM, context(SeedScript(texts)))


# --- end to end: per-depth accuracy, flips ------------------------------------------------------


async def test_eval_records_depths_and_summary_reports_accuracy_cost_and_flips(tmp_path, write_problems):
    path = write_problems({"id": "a", "question": "What is 2 + 3?", "answer": "5"},
                          {"id": "b", "question": "What is 4 + 4?", "answer": "8"}, name="two.jsonl")

    class ByDepth(FakeBackend):
        """Depth 1 right for a, wrong for b; every revision flips the previous answer's correctness."""

        def _raw_text(self, request, prompt, index):
            depth = prompt.count("Attempt ") + 1
            gold = "5" if "2 + 3" in prompt else "8"
            right = (depth % 2 == 1) == (gold == "5")
            return f"So \\boxed{{{gold if right else '0'}}}"

    config = RunConfig(benchmark=str(path), backend="fake", model="fake", output=tmp_path / "runs",
                       strategy="revision", strategy_options={"n": 6, "ratio": "3:2"})
    result = await run_eval(config, backend=ByDepth(num_params=10))
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    a = next(r for r in records if r["problem_id"] == "a")
    assert a["trace_metadata"]["depth"] == [1, 2, 3, 1, 2, 3]
    assert [c["correct"] for c in a["candidates"]] == [True, False, True, True, False, True]

    revision = result.summary["revision"]
    assert [d["accuracy"] for d in revision["depths"]] == [0.5, 0.5, 0.5]
    assert [d["attempts"] for d in revision["depths"]] == [4, 4, 4]
    assert [d["calls"] for d in revision["depths"]] == [4, 4, 4]
    total = result.summary["cost"]
    for name in ("prompt_tokens", "generated_tokens", "cached_prompt_tokens"):
        assert sum(d[name] for d in revision["depths"]) == total[name]
    # 8 consecutive pairs (2 problems x 2 chains x 2): 4 from correct, all flipped; 4 from incorrect, all flipped.
    assert revision["flips"] == {"correct_to_incorrect": 1.0, "incorrect_to_correct": 1.0,
                                 "pairs_from_correct": 4, "pairs_from_incorrect": 4}
    assert result.summary["chosen_rule"] == "majority"


def test_revision_summary_counts_flips_by_hand():
    def record(flags, depth, chain):
        return {"candidates": [{"correct": f} for f in flags], "trace_metadata": {"depth": depth, "chain": chain}}

    records = [
        record([True, True, False, False], [1, 2, 3, 4], [0, 0, 0, 0]),  # C C I I: from correct 2 pairs, 1 flip
        record([False, True, True, True], [1, 2, 1, 2], [0, 0, 1, 1]),  # I C | C C: 1 from incorrect (flip), 1 from correct
    ]
    summary = revision_summary(records + [{"candidates": [], "trace_metadata": {}}])  # best-of-n records are ignored
    assert summary["flips"] == {"correct_to_incorrect": 1 / 3, "incorrect_to_correct": 1 / 2,
                                "pairs_from_correct": 3, "pairs_from_incorrect": 2}
    assert [(d["depth"], d["attempts"], d["accuracy"]) for d in summary["depths"]] == [
        (1, 3, 2 / 3), (2, 3, 1.0), (3, 1, 0.0), (4, 1, 0.0)
    ]
    assert revision_summary([{"candidates": [], "trace_metadata": {}}]) is None


def test_eval_refuses_hierarchical_selection_without_a_verifier_before_generating(tmp_path):
    config = RunConfig(benchmark="arithmetic", backend="fake", strategy="revision", output=tmp_path,
                       strategy_options={"n": 4, "ratio": "2:2", "selection": "hierarchical"})
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="needs a verifier"):
        asyncio.run(run_eval(config, backend=backend))
    assert backend.requests == []
