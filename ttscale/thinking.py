"""Thinking-aware generation: a sample's thinking span and answer span, generated as separate
requests, recorded apart, their tokens counted apart, the answer read from the answer span only.

A thinking model writes `<think> ... </think>` and then its answer. Here the thinking span is
generated with the end delimiter as its stop string, so the engine says exactly how many tokens
the thinking took; the answer span is a second request that continues after the delimiter, so
its tokens are counted on their own too. A budget caps the thinking span's generated tokens
exactly (each request's max_tokens is what is left of it), and `extensions` suppresses the
model's attempts to end thinking: instead of the delimiter, `wait` is appended and thinking goes
on. That is s1's budget forcing (Muennighoff et al. 2025; github.com/simplescaling/s1, the README's
"vLLM with budget forcing" and lm-evaluation-harness' vllm_causallms.py `thinking_n_ignore`):

    thinking = ""
    repeat:  thinking += LLM(prompt + <think> + thinking, stop=</think>, max_tokens=budget - used)
             if it stopped (end delimiter or end of sequence) and extensions are left:
                 thinking += "Wait"; continue                     # suppress the end, think on
             else: break                                          # it ended itself, or the budget ran out
    cut at the budget:  prefix = <think> + thinking + "\\n" + </think> + "\\nFinal Answer:"   # s1's thinking_end_max
    ended by the model: prefix = <think> + thinking + </think>
    answer = LLM(prompt + prefix)

As in s1, the budget counts the tokens the model generates while thinking (its suppressed end
delimiters included: they were generated); the forced "Wait" strings are prompt text, not
generated tokens, and are not charged to it (s1's README subtracts `len(output.token_ids)` only).

Delimiters: `<think>`/`</think>` for thinking models (DELIMITERS["think"]), or plain text for a
model that has no thinking section (DELIMITERS["plain"]: no opening, "Final answer:" closes).
A delimiter must reach the text to be seen: a model whose `</think>` is a special token that the
engine drops from its detokenized output never stops on it.
"""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ttscale.protocols import AnswerTools, Meter
from ttscale.types import ChatMessage, FinishReason, GenRequest, SampleParams


class ThinkingFormat(BaseModel):
    """How a thinking span opens and closes, and what follows it when a budget cuts it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: str = Field(default="<think>", description="opens the thinking span (sent as the assistant prefix)")
    end: str = Field(default="</think>", min_length=1, description="closes it: the model's stop, what budget forcing suppresses")
    cut_cue: str = Field(default="\nFinal Answer:", description="appended after `end` when the budget cut the thinking (s1)")


DELIMITERS: dict[str, ThinkingFormat] = {
    "think": ThinkingFormat(),
    # A model without a thinking section: it reasons in plain text until it writes "Final answer:";
    # the delimiter is its own cue, so a cut adds none.
    "plain": ThinkingFormat(start="", end="Final answer:", cut_cue=""),
}
DelimiterName = Literal["think", "plain"]
FORCED_RULE = "forced"  # budget forcing's rule: the answer forced at the thinking budget


class Spans(BaseModel):
    """One sample as thinking span and answer span, each with the tokens generated in it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thinking: str  # the thinking span: the model's text with the forced `wait`s, no delimiters
    answer: str  # the answer span: everything after the end delimiter (a cut's cue, then the model's answer)
    thinking_tokens: int = Field(ge=0)  # generated while thinking
    answer_tokens: int = Field(ge=0)  # generated in the answer
    extensions: int = Field(ge=0)  # times an end of thinking was suppressed
    ended_by: Literal["model", "budget"]  # model: it closed the thinking itself; budget: cut there
    thinking_calls: int = Field(ge=0)
    finish_reason: FinishReason  # the answer request's

    def text(self, fmt: ThinkingFormat) -> str:
        """The whole sample as the model read it: opening, thinking, end delimiter, answer span."""
        return fmt.start + self.thinking + end_of_thinking(self.thinking, fmt, self.ended_by) + self.answer


def end_of_thinking(thinking: str, fmt: ThinkingFormat, ended_by: Literal["model", "budget"]) -> str:
    """What closes the thinking span: the end delimiter as the model wrote it, or, at a cut, a
    newline where the text lacks one and the delimiter (s1); the cut's cue opens the answer span."""
    if ended_by == "model" or not thinking or thinking.endswith("\n"):
        return fmt.end
    return "\n" + fmt.end


def split_spans(text: str, fmt: ThinkingFormat) -> tuple[str, str | None]:
    """A finished sample's (thinking, answer span): the text before the first end delimiter
    (after the opening, if it starts with one) and the text after it; None for the answer when
    the model never closed its thinking, so no answer is read from thinking."""
    if fmt.start and text.lstrip().startswith(fmt.start):
        text = text.lstrip()[len(fmt.start):]
    thinking, found, answer = text.partition(fmt.end)
    return thinking, answer if found else None


def answer_of(text: str, fmt: ThinkingFormat, answers: AnswerTools) -> str | None:
    """The answer stated in a finished sample's answer span only (None without one)."""
    _, span = split_spans(text, fmt)
    return None if span is None else answers.extract_answer(span)


def delimiter_rests(thinking: str, end: str) -> tuple[str, ...]:
    """The rests of the delimiter `end` whose start the thinking ends with ("</" leaves "think>")."""
    return tuple(end[j:] for j in range(1, len(end)) if thinking.endswith(end[:j]))


class Thinker:
    """One thinking span as it grows: `think_to` extends it to a budget (extending the model's
    attempts to stop while extensions last), `answer` forces the answer after it.

    Calling think_to with growing budgets continues the same span, so a budget sweep shares its
    thinking. Decoding greedily (s1's setting), the span at each budget is what a run with that
    budget alone would have thought; sampling, it is a draw from the same distribution (a sample
    continued from its prefix with fresh randomness), not the same draw, as the seeds differ.
    Continuations send the thinking so far as text, re-tokenized, as s1's README does.
    """

    def __init__(self, prompt: tuple[ChatMessage, ...] | str, params: SampleParams, fmt: ThinkingFormat, *,
                 extensions: int = 0, wait: str = "Wait"):
        self.prompt = prompt
        self.params = params
        self.fmt = fmt
        self.allowed_extensions = extensions
        self.wait = wait
        self.thinking = ""
        self.tokens = 0  # generated in the thinking span so far
        self.extensions = 0
        self.calls = 0  # requests sent, answers included (each gets its own seed)
        self.thinking_calls = 0
        self.tried_to_end = False  # the last thinking request stopped: the model ended its thinking
        self.done = False  # it ended with no extension left (or the engine gave up): thinking is over

    def _params(self, max_tokens: int, stop: Sequence[str], include_stop_str: bool) -> SampleParams:
        # A distinct seed per request, in the order they are sent: reproducible, and a continuation
        # never redraws the sample it continues.
        seed = None if self.params.seed is None else (self.params.seed + self.calls) & 0x7FFFFFFF
        return self.params.model_copy(update={"n": 1, "max_tokens": max_tokens, "stop": tuple(stop),
                                              "include_stop_str": include_stop_str, "seed": seed})

    async def think_to(self, meter: Meter, budget: int) -> None:
        """Think until `budget` tokens have been generated in the span, or the model ends its
        thinking with no extension left. Never generates past the budget."""
        while not self.done and self.tokens < budget:
            if self.tried_to_end:  # suppressed: the end delimiter is dropped, "Wait" goes in its place
                self.thinking += self.wait
                self.extensions += 1
                self.tried_to_end = False
            # A cut (a smaller budget of a sweep) may have left the start of a multi-token delimiter
            # ("Final": "Final answer:"): the rest of it stops the engine too, or it would run past
            # the delimiter, whose stop string is matched in new text only.
            rests = delimiter_rests(self.thinking, self.fmt.end)
            request = GenRequest(prompt=self.prompt, prefix=self.fmt.start + self.thinking,
                                 params=self._params(budget - self.tokens, (self.fmt.end, *rests), True))
            [generation] = await meter.generate([request])
            [completion] = generation.completions
            self.calls += 1
            self.thinking_calls += 1
            self.tokens += completion.num_tokens
            text = completion.text  # the stop string included: it tells the delimiter from an end of sequence
            search_from = max(0, len(self.thinking) - len(self.fmt.end) + 1)  # a delimiter needs a new character
            combined = self.thinking + text
            closed_at = combined.find(self.fmt.end, search_from)
            self.thinking = combined if closed_at < 0 else combined[:closed_at]
            stopped_early = completion.finish_reason == "stop" and closed_at < 0 and any(map(text.endswith, rests))
            # The delimiter, or an end of sequence: the model tried to end (s1 stops on both).
            if closed_at >= 0 or (completion.finish_reason == "stop" and not stopped_early):
                self.tried_to_end = True
                self.done = self.extensions >= self.allowed_extensions
            elif completion.finish_reason not in ("stop", "length"):  # aborted or failed: nothing more to think
                self.done = True

    @property
    def ended_by(self) -> Literal["model", "budget"]:
        """Whether the model closed the span itself (at its last request) or a budget cut it."""
        return "model" if self.tried_to_end else "budget"

    async def answer(self, meter: Meter, max_tokens: int) -> Spans:
        """Close the thinking span as it stands (the model's own end, or a cut with the cue) and
        generate the answer span after it. The thinking span is left as it was: a larger budget
        can continue it."""
        ended_by = self.ended_by
        cue = self.fmt.cut_cue if ended_by == "budget" else ""  # s1: "Final Answer:" after a cut only
        prefix = self.fmt.start + self.thinking + end_of_thinking(self.thinking, self.fmt, ended_by) + cue
        request = GenRequest(prompt=self.prompt, prefix=prefix,
                             params=self._params(max_tokens, self.params.stop, self.params.include_stop_str))
        [generation] = await meter.generate([request])
        [completion] = generation.completions
        self.calls += 1
        # The answer span starts after the end delimiter: a cut's cue is in it, as the model reads it.
        return Spans(thinking=self.thinking, answer=cue + completion.text, thinking_tokens=self.tokens,
                     answer_tokens=completion.num_tokens, extensions=self.extensions, ended_by=ended_by, thinking_calls=self.thinking_calls,
                     finish_reason=completion.finish_reason)
