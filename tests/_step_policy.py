"""A scripted step policy for the tree searches' tests on the fake backend (beam search, DVTS,
particle filtering, MCTS): step d of sample i reads 'S{d}c{i}', and at a given depth it answers."""

from __future__ import annotations


def depth_of(prompt: str) -> int:
    """How many steps the assistant text already holds (the fake renders 'assistant: ' + prefix)."""
    return prompt.split("assistant: ", 1)[1].count("\n\n")


def step_responder(final_depth: int = 2, answer=lambda prompt, index: "2"):
    """Policy: step d of sample i reads 'S{d}c{i}'; at final_depth it states an answer and stops."""

    def respond(prompt: str, index: int) -> str:
        depth = depth_of(prompt)
        if depth >= final_depth:
            return f"S{depth}c{index} so \\boxed{{{answer(prompt, index)}}}"
        return f"S{depth}c{index} work.\n\nmore"

    return respond
