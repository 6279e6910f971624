"""Budget forcing (s1) and thinking-aware generation on the fake backend with a scripted thinker:
"Wait" goes in exactly where the model tried to end its thinking, exactly as many times as
allowed; the thinking budget is exact; thinking and answer tokens are counted apart; the answer
is read from the answer span only; a budget sweep gives what runs at each budget alone give; and
the strategy runs through `ttscale eval` and `ttscale compare`."""

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from ttscale.backends.fake import FakeBackend, fake_tokens
from ttscale.benchmarks.arithmetic import ArithmeticBenchmark
from ttscale.context import SolveContext
from ttscale.registry import strategies
from ttscale.strategies.budget_forcing import BudgetForcing
from ttscale.thinking import DELIMITERS, FORCED_RULE, answer_of, split_spans
from ttscale.types import ChatMessage, Problem, SampleParams

ANSWERS = ArithmeticBenchmark()
PROBLEM = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="What is 2 + 3?"),))
OPENING = "assistant: <think>"


def tokens(text: str) -> int:
    return len(fake_tokens(text))


class ScriptedThinker:
    """A deterministic thinker. Its thinking is `thoughts[k]` after k "Wait"s; a thought ending in
    the end delimiter is an attempt to stop thinking. Each request continues exactly where the
    prefix left off (so a cut thought resumes mid-way), and a request whose prefix holds the end
    delimiter is the answer request: it gets `answer`. Every request's rendered prompt is kept."""

    def __init__(self, thoughts, answer="So the answer is \\boxed{5}.", end="</think>", opening=OPENING, wait="Wait"):
        self.thoughts, self.answer, self.end, self.opening, self.wait = thoughts, answer, end, opening, wait
        self.prompts: list[str] = []

    def __call__(self, prompt: str, index: int) -> str:
        self.prompts.append(prompt)
        thinking = prompt.split(self.opening, 1)[1]
        if self.end in thinking:
            return self.answer
        waits = thinking.count(self.wait)
        written = thinking.rsplit(self.wait, 1)[-1] if waits else thinking
        thought = self.thoughts[min(waits, len(self.thoughts) - 1)]
        assert thought.startswith(written), (thought, written)  # a continuation resumes its own thought
        return thought[len(written):]

    @property
    def thinking_prompts(self) -> list[str]:
        return [p for p in self.prompts if self.end not in p.split(self.opening, 1)[1]]


async def solve(thinker, **options):
    backend = FakeBackend(responder=thinker)
    ctx = SolveContext.for_problem(PROBLEM, backend=backend, answers=ANSWERS, params=SampleParams(max_tokens=64), seed=0)
    trace = await ctx.solve(BudgetForcing(**options), PROBLEM)
    return trace, backend


STOPPER = [f" thought {i} says 7.</think>" for i in range(10)]  # tries to end after every thought


@pytest.mark.parametrize("extensions", [0, 1, 3])
async def test_wait_replaces_each_premature_end_exactly_the_configured_number_of_times(extensions):
    thinker = ScriptedThinker(STOPPER)
    trace, backend = await solve(thinker, thinking_budget=10_000, extensions=extensions)
    [record] = trace.metadata["thinking"]
    expected = "Wait".join(t.removesuffix("</think>") for t in STOPPER[: extensions + 1])
    assert trace.candidates[0].text == f"<think>{expected}</think>So the answer is \\boxed{{5}}."
    assert record["extensions"] == extensions and record["ended_by"] == "model"
    assert record["thinking_calls"] == extensions + 1 and trace.cost.calls == extensions + 2
    # Each continuation was sent after the model's end, with "Wait" in the delimiter's place.
    for k, prompt in enumerate(thinker.thinking_prompts[1:], 1):
        assert prompt.endswith("Wait".join(t.removesuffix("</think>") for t in STOPPER[:k]) + "Wait")
    # The answer request continues after the model's own delimiter: no cue (s1 adds one at a cut only).
    assert thinker.prompts[-1].endswith(expected + "</think>")


async def test_no_wait_when_the_budget_cuts_the_thinking():
    thinker = ScriptedThinker([" one two three four five six seven eight nine ten eleven twelve</think>"])
    trace, _ = await solve(thinker, thinking_budget=5, extensions=3)
    [record] = trace.metadata["thinking"]
    assert record["extensions"] == 0 and record["ended_by"] == "budget" and record["thinking_tokens"] == 5
    assert "Wait" not in trace.candidates[0].text
    # A cut closes the thinking on a new line and cues the answer (s1's thinking_end_max).
    assert thinker.prompts[-1].endswith("<think> one two three four five\n</think>\nFinal Answer:")


# Thoughts of 9, 9 and 16 fake tokens ("</think>" is 4: <, /, think, >); the last ends by end of
# sequence, which is an attempt to stop too (s1 stops thinking on end-of-turn tokens as well).
NINE_NINE_SIXTEEN = [" a b c d e</think>", " f g h i j</think>", " k l m n o p q r s t u v w x y z"]


@pytest.mark.parametrize("budget, max_tokens, ended_by", [
    (1, [1], "budget"),
    (5, [5], "budget"),
    (9, [9], "model"),  # the first thought ends on the budget's last token: the model's own end
    (10, [10, 1], "budget"),  # 9, Wait, 1 more
    (23, [23, 14, 5], "budget"),
    (34, [34, 25, 16], "model"),
    (40, [40, 31, 22, 6], "budget"),  # 9 + 9 + 16, Wait, 6 of the next
])
async def test_the_thinking_budget_is_exact(budget, max_tokens, ended_by):
    """Each thinking request asks for exactly what is left of the budget (hand-counted), and the
    span's generated tokens reach the budget and never pass it."""
    trace, backend = await solve(ScriptedThinker(NINE_NINE_SIXTEEN), thinking_budget=budget, extensions=5)
    [record] = trace.metadata["thinking"]
    thinking_requests = [r for r in backend.requests if "</think>" not in r.prefix]
    assert [r.params.max_tokens for r in thinking_requests] == max_tokens
    assert record["thinking_tokens"] == budget and record["ended_by"] == ended_by


async def test_tokens_are_counted_per_span_and_add_up_to_the_metered_total():
    thoughts = [" first idea.</think>", " second idea, longer than the first.</think>"]
    answer = " The sum is \\boxed{5}."
    thinker = ScriptedThinker(thoughts, answer=answer)
    trace, _ = await solve(thinker, thinking_budget=1000, extensions=1)
    [record] = trace.metadata["thinking"]
    # The suppressed delimiter was generated, so it counts; the forced "Wait" was not.
    assert record["thinking_tokens"] == tokens(thoughts[0]) + tokens(thoughts[1])
    assert record["answer_tokens"] == tokens(answer)
    assert trace.candidates[0].num_tokens == record["thinking_tokens"] + record["answer_tokens"]
    assert trace.cost.generated_tokens == record["cost"]["generated_tokens"] == trace.candidates[0].num_tokens


async def test_the_answer_is_read_from_the_answer_span_only():
    thinking_says_7 = [" maybe \\boxed{7}? no.</think>"]
    trace, _ = await solve(ScriptedThinker(thinking_says_7, answer=" \\boxed{5}"), thinking_budget=100, extensions=0)
    assert trace.candidates[0].answer == "5" and trace.selections[FORCED_RULE] == "5"
    trace, _ = await solve(ScriptedThinker(thinking_says_7, answer=" I am not sure."), thinking_budget=100, extensions=0)
    assert trace.candidates[0].answer is None  # the thinking's 7 is never read


def test_split_spans_and_answer_of_read_a_finished_sample():
    think = DELIMITERS["think"]
    assert split_spans("<think>try \\boxed{7}</think>so \\boxed{5}", think) == ("try \\boxed{7}", "so \\boxed{5}")
    assert answer_of("<think>try \\boxed{7}</think>so \\boxed{5}", think, ANSWERS) == "5"
    assert split_spans("<think>still thinking \\boxed{7}", think) == ("still thinking \\boxed{7}", None)
    assert answer_of("<think>still thinking \\boxed{7}", think, ANSWERS) is None  # never closed: no answer span
    plain = DELIMITERS["plain"]
    assert answer_of("2 + 3 = 4? no, 2 + 3 = 5. Final answer: 5", plain, ANSWERS) == "5"


async def test_plain_text_delimiters_for_a_model_without_a_thinking_section():
    thinker = ScriptedThinker([" 2 + 3 is 6? Final answer:", " no, 2 + 3 is 5. Final answer:"], answer=" 5",
                              end="Final answer:", opening="assistant: ")
    trace, _ = await solve(thinker, thinking_budget=100, extensions=1, delimiters="plain")
    assert trace.candidates[0].text == " 2 + 3 is 6? Wait no, 2 + 3 is 5. Final answer: 5"
    assert trace.candidates[0].answer == "5"
    assert trace.metadata["thinking"][0]["extensions"] == 1


async def test_a_sweep_gives_each_budget_what_a_run_at_that_budget_alone_gives():
    thoughts = [" a b c d e f</think>", " g h i j k l m n</think>", " o p q</think>"]  # 10, 12 and 7 tokens
    # 22: the second thought ends exactly there, an extension left: the model's own end at 22, a
    # "Wait" beyond. 29: the third ends it for good, so 31 and 200 give the same sample.
    budgets = [3, 8, 14, 22, 29, 31, 200]
    sweep, _ = await solve(ScriptedThinker(thoughts), thinking_budget=budgets, extensions=2)
    assert [r["budget"] for r in sweep.metadata["thinking"]] == budgets
    for budget, candidate, record in zip(budgets, sweep.candidates, sweep.metadata["thinking"]):
        alone, _ = await solve(ScriptedThinker(thoughts), thinking_budget=budget, extensions=2)
        [alone_record] = alone.metadata["thinking"]
        assert candidate == alone.candidates[0]
        assert {k: v for k, v in record.items() if k not in ("cost", "thinking_calls")} == \
               {k: v for k, v in alone_record.items() if k not in ("cost", "thinking_calls")}
        # The cost of a run at that budget: the same tokens generated (the sweep splits its thinking
        # into more requests at the smaller budgets, each re-reading a prompt the cache holds).
        assert record["cost"]["generated_tokens"] == alone.cost.generated_tokens
    ended = [r["ended_by"] for r in sweep.metadata["thinking"]]
    assert ended == ["budget", "budget", "budget", "model", "model", "model", "model"]
    assert [r["extensions"] for r in sweep.metadata["thinking"]] == [0, 0, 1, 1, 2, 2, 2]
    assert sweep.candidates[-1] == sweep.candidates[-2] == sweep.candidates[-3]
    assert sweep.metadata["thinking"][-1]["cost"] == sweep.metadata["thinking"][-3]["cost"]  # paid once


@pytest.mark.parametrize("thoughts, answer, options", [
    (NINE_NINE_SIXTEEN, "So \\boxed{5}.", {}),
    # A cut inside "</think>" ("</" of it): the continuation must still stop on the rest of it.
    ([" a b c</think>", " d < e means d/think> but not</think>", " f g"], " \\boxed{5}", {}),
    # Plain text: "Final answer:" is three fake tokens, so small budgets cut it in two.
    ([" 2 + 3 is 6? Final answer:", " no, 2 + 3 is 5. Final answer:", " sure."], " 5", {"delimiters": "plain"}),
], ids=["think", "cut-delimiter", "plain"])
async def test_every_budget_of_a_sweep_is_a_run_at_that_budget_alone(thoughts, answer, options):
    """Budgets 1..40 in one sweep against 40 runs: the same candidate and the same spans at every
    budget, including budgets that cut a delimiter in two."""
    plain = options.get("delimiters") == "plain"
    script = dict(answer=answer, end="Final answer:", opening="assistant: ") if plain else dict(answer=answer)
    budgets = list(range(1, 41))
    sweep, _ = await solve(ScriptedThinker(thoughts, **script), thinking_budget=budgets, extensions=2, **options)
    for budget, candidate, record in zip(budgets, sweep.candidates, sweep.metadata["thinking"]):
        alone, _ = await solve(ScriptedThinker(thoughts, **script), thinking_budget=budget, extensions=2, **options)
        assert candidate == alone.candidates[0], budget
        assert record["thinking_tokens"] == alone.metadata["thinking"][0]["thinking_tokens"] <= budget
        assert record["extensions"] == alone.metadata["thinking"][0]["extensions"]
        assert ("</think>" if not plain else "Final answer:") not in candidate.text.rsplit(
            "</think>" if not plain else "Final answer:", 1)[0]  # the delimiter closes the thinking once, at its end


async def test_a_sweep_never_pays_twice_for_one_thinking():
    thoughts = [" a b c d e f g h i j k l"]  # never tries to stop
    trace, backend = await solve(ScriptedThinker(thoughts), thinking_budget=[2, 4, 8], extensions=0)
    # Thinking continues across budgets (2 + 2 + 4 tokens), one answer per budget.
    thinking_requests = [r for r in backend.requests if "</think>" not in r.prefix]
    assert [r.params.max_tokens for r in thinking_requests] == [2, 2, 4]
    assert trace.cost.calls == 6
    assert [r["thinking_tokens"] for r in trace.metadata["thinking"]] == [2, 4, 8]


def test_options_are_checked_and_named():
    assert BudgetForcing(thinking_budget=[512, 128, 128]).thinking_budget == (128, 512)
    assert BudgetForcing(thinking_budget=64).thinking_budget == (64,)
    with pytest.raises(ValidationError, match="thinking_budget"):
        BudgetForcing(thinking_budget=0)
    with pytest.raises(ValidationError, match="extensions"):
        BudgetForcing(extensions=-1)
    custom = BudgetForcing(delimiters="plain", think_end="ANSWER:")
    assert (custom.format.start, custom.format.end, custom.format.cut_cue) == ("", "ANSWER:", "")
    assert strategies.create("budget-forcing", thinking_budget=32).thinking_budget == (32,)


def ttscale(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ttscale.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})  # one table row per line


def test_eval_and_compare_run_a_budget_sweep_on_the_fake_backend(tmp_path):
    result = ttscale("eval", "-s", "budget-forcing", "--backend", "fake", "-b", "arithmetic", "--limit", "3",
                     "-S", "thinking_budget=[4,8,32]", "-S", "extensions=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accuracy · forced (chosen)" in result.stdout
    [run_dir] = (tmp_path / "runs").iterdir()
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        spans = record["trace_metadata"]["thinking"]
        assert [s["budget"] for s in spans] == [4, 8, 32] and len(record["candidates"]) == 3
        assert all(s["thinking_tokens"] <= s["budget"] and s["extensions"] <= 2 for s in spans)
        assert record["selections"][FORCED_RULE]["answer"] == record["candidates"][-1]["answer"]
    compared = ttscale("compare", str(run_dir), "--bootstrap", "0", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    rows = [line.split("│")[1:3] for line in compared.stdout.splitlines() if line.count("│") >= 9]
    assert [(curve.strip(), n.strip()) for curve, n in rows] == [("forced", "4"), ("forced", "8"), ("forced", "32")]
