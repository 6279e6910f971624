"""The real thing: best-of-N with the embedded SmolLM2 through the vLLM engine, end to end."""

import json

import pytest

from ttscale.config import RunConfig
from ttscale.runner import run_eval
from ttscale.types import SampleParams

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]


def engine_config(tmp_path, name):
    return RunConfig(
        benchmark="arithmetic",
        backend="vllm",
        model="smollm2-135m",
        strategy_options={"n": 4},
        sampling=SampleParams(max_tokens=64, temperature=0.8),
        limit=2,
        output=tmp_path / name,
    )


async def test_best_of_n_on_real_model_end_to_end(vllm_backend, tmp_path):
    first = await run_eval(engine_config(tmp_path, "a"), backend=vllm_backend)
    records = [json.loads(line) for line in (first.run_dir / "samples.jsonl").read_text().splitlines()]
    assert first.summary["problems"] == 2 and len(records) == 2
    for record in records:
        assert len(record["candidates"]) == 4
        for candidate in record["candidates"]:
            # Token counts are the engine's own, and agree with the tokenizer on the text.
            assert candidate["num_tokens"] <= 64
            if candidate["finish_reason"] == "length":
                assert candidate["num_tokens"] == 64
        assert record["cost"]["generated_tokens"] == sum(c["num_tokens"] for c in record["candidates"])
        assert record["cost"]["prompt_tokens"] > 0
        assert record["cost"]["flops"] > 0
        assert set(record["selections"]) == {"majority", "first", "oracle"}
    served_by = json.loads((first.run_dir / "backend.json").read_text())
    assert served_by["num_params"] == 134_515_008
    assert served_by["engine_settings"]["enable_prefix_caching"] is True
    assert 0.0 <= first.summary["pass_at_k"]["1"] <= first.summary["pass_at_k"]["4"] <= 1.0

    # Same config, fresh directory: per-request seeds reproduce every sample exactly.
    second = await run_eval(engine_config(tmp_path, "b"), backend=vllm_backend)
    texts = lambda run: [[c["text"] for c in json.loads(l)["candidates"]] for l in sorted((run.run_dir / "samples.jsonl").read_text().splitlines())]
    assert texts(first) == texts(second)


async def test_beam_search_with_the_model_judging_its_own_steps(vllm_backend, tmp_path):
    config = RunConfig(
        benchmark="arithmetic",
        backend="vllm",
        model="smollm2-135m",
        strategy="beam-search",
        strategy_options={"n": 2, "beam_width": 2, "max_steps": 3},
        verifier="llm-judge-prm",
        sampling=SampleParams(max_tokens=48, temperature=0.8),
        limit=1,
        output=tmp_path / "beam",
    )
    result = await run_eval(config, backend=vllm_backend)
    [record] = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(record["candidates"]) == 2
    for candidate in record["candidates"]:
        # Judge scores are probabilities read from the engine's logprobs, one per step.
        assert candidate["step_scores"] and all(0.0 <= s <= 1.0 for s in candidate["step_scores"])
        assert candidate["score"] == candidate["step_scores"][-1]  # aggregation "last"
        assert candidate["num_tokens"] <= 48
    cost = record["cost"]
    assert cost["generated_tokens"] > 0 and cost["cached_prompt_tokens"] >= 0
    assert cost["verifier_calls"] > 0 and cost["verifier_tokens"] > cost["verifier_calls"]
    assert cost["flops"] > cost["verifier_flops"] > 0
