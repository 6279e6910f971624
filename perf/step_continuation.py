"""How much of the prompt vLLM actually computes during step-wise search.

A 20-step continuation: each step sends the question plus every step so far as an assistant
prefix, and stops at the step delimiter "\\n\\n" (kept). With prefix caching, only the new tail
of each prompt should be computed. Prints, from one run, uncached prompt tokens / prompt tokens
sent, per step and in total (lower is better; 1.0 would mean no reuse at all).

    python perf/step_continuation.py [--steps 20] [--backend vllm|openai --base-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from ttscale.types import ChatMessage, GenRequest, SampleParams

QUESTION = (
    "A farmer has 17 sheep, buys 5 more each week for 6 weeks, then sells a third of the flock. "
    "Explain every step of your reasoning in its own short paragraph before giving the answer."
)


async def main(args: argparse.Namespace) -> None:
    if args.backend == "openai":
        from ttscale.backends.openai_http import OpenAIBackend

        backend = OpenAIBackend("smollm2-135m", base_url=args.base_url)
    else:
        from ttscale.backends.vllm import VLLMBackend

        backend = VLLMBackend("smollm2-135m")
    prompt = (ChatMessage(role="user", content=QUESTION),)
    prefix, sent, computed = "", 0, 0
    try:
        for step in range(1, args.steps + 1):
            params = SampleParams(max_tokens=48, temperature=0.7, seed=step, stop=("\n\n",), include_stop_str=True)
            [generation] = await backend.generate([GenRequest(prompt=prompt, prefix=prefix, params=params)])
            text = generation.completions[0].text
            # A step that ended without the delimiter still gets one, so the next step continues.
            prefix += text if text.endswith("\n\n") else text + "\n\n"
            uncached = generation.prompt_tokens - generation.cached_prompt_tokens
            sent, computed = sent + generation.prompt_tokens, computed + uncached
            print(f"step {step:2d}: prompt {generation.prompt_tokens:5d} tokens, cached {generation.cached_prompt_tokens:5d}, computed {uncached:4d}")
    finally:
        await backend.close()
    print(f"uncached/total prompt tokens over {args.steps} steps: {computed}/{sent} = {computed / sent:.3f}")


if __name__ == "__main__":  # vLLM spawns workers, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backend", choices=["vllm", "openai"], default="vllm")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    asyncio.run(main(parser.parse_args()))
