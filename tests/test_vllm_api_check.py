"""scripts/check_vllm_api.py: it finds the vLLM names the backends use, passes on the installed
vllm, and names what moved (checked by renaming names in a copy of the backends)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_vllm_api.py"
spec = importlib.util.spec_from_file_location("check_vllm_api", SCRIPT)
check_vllm_api = importlib.util.module_from_spec(spec)
sys.modules["check_vllm_api"] = check_vllm_api  # dataclasses look their module up by name
spec.loader.exec_module(check_vllm_api)


def test_collection_finds_the_names_the_backends_use():
    names = check_vllm_api.collect_source().names()
    expected = {
        ("vllm.engine.arg_utils", "AsyncEngineArgs"),  # imports
        ("vllm.inputs", "TokensPrompt"),
        ("vllm.v1.engine.async_llm", "AsyncLLM"),
        ("vllm:SamplingParams", "include_stop_str_in_output"),  # keywords of calls
        ("vllm:PoolingParams", "use_activation"),
        ("vllm.inputs:TokensPrompt", "prompt_token_ids"),
        ("vllm.v1.engine.async_llm:AsyncLLM.generate", "request_id"),
        ("vllm.sampling_params:RequestOutputKind", "DELTA"),  # attributes of imported names
        ("vllm.outputs:RequestOutput", "num_cached_tokens"),  # what the engine returns, followed
        ("vllm.outputs:RequestOutput", "finished"),
        ("vllm.outputs:CompletionOutput", "cumulative_logprob"),  # through `[sample] = output.outputs`
        ("vllm.outputs:CompletionOutput", "spec_decode_metrics"),  # getattr(sample, "...", None)
        ("vllm.v1.metrics.stats:RequestSpecDecodeMetrics", "num_draft_tokens"),  # through a helper's parameter
        ("vllm.logprobs:Logprob", "decoded_token"),  # through position.values()
        ("vllm.outputs:PoolingOutput", "data"),  # final.outputs.data
        ("vllm.v1.metrics.reader:Counter", "value"),  # through a helper's return value
        ("vllm.v1.engine.async_llm:AsyncLLM", "abort:coroutine"),  # call styles
        ("vllm.v1.engine.async_llm:AsyncLLM", "generate:async-iterator"),
        ("vllm.v1.engine.async_llm:AsyncLLM", "get_tokenizer:plain"),
        ("vllm.v1.engine.exceptions", "EngineDeadError"),  # serve's ENGINE_DOWN, by name
        (check_vllm_api.METRICS, "vllm:spec_decode_num_drafts"),  # a Prometheus metric's name
    }
    assert expected <= names, sorted(expected - names)


def test_call_styles_are_compared_with_the_method():
    async def coroutine(): ...
    async def generator():
        yield 1
    def plain(): ...

    problem = check_vllm_api.call_style_problem
    assert problem(generator, "async-iterator") is None
    assert problem(coroutine, "coroutine") is None
    assert problem(plain, "plain") is None
    assert "async generator" in problem(coroutine, "async-iterator")
    assert "coroutine" in problem(plain, "coroutine")
    assert "became async" in problem(coroutine, "plain")


def test_passes_on_the_installed_vllm():
    pytest.importorskip("vllm")
    collected = check_vllm_api.collect_source()
    assert check_vllm_api.collect_built(collected) == []
    built = collected.names("engine-arg")
    # ttscale's own builders ran: the GPU path's, the CPU path's and speculative decoding's arguments.
    assert {("vllm.engine.arg_utils:AsyncEngineArgs", n) for n in
            ("model", "enable_prefix_caching", "kv_cache_memory_bytes", "speculative_config", "runner", "convert")} <= built
    assert ("vllm.sampling_params:SamplingParams", "min_p") in collected.names("sampling-param")
    assert check_vllm_api.check(collected) == []


def test_names_what_moved(tmp_path):
    pytest.importorskip("vllm")
    backends = tmp_path / "backends"
    shutil.copytree(check_vllm_api.BACKENDS, backends)
    source = (backends / "vllm.py").read_text()
    for old, new in (("sample.cumulative_logprob", "sample.cumulative_logprob_moved"),
                     ("include_stop_str_in_output=", "include_stop_moved="),
                     ("RequestOutputKind.DELTA", "RequestOutputKind.DELTA_MOVED"),
                     ("from vllm.inputs import TokensPrompt", "from vllm.inputs import TokensPromptMoved"),
                     ('"vllm:spec_decode_num_drafts"', '"vllm:spec_decode_drafts_moved"')):
        assert old in source
        source = source.replace(old, new)
    (backends / "vllm.py").write_text(source)
    problems = "\n".join(check_vllm_api.check(check_vllm_api.collect_source(backends)))
    for moved in ("'cumulative_logprob_moved'", "'include_stop_moved'", "'DELTA_MOVED'", "TokensPromptMoved", "'vllm:spec_decode_drafts_moved'"):
        assert moved in problems
    assert "vllm.py:" in problems  # with where ttscale uses it
    assert "'cumulative_logprob'" not in problems


def test_names_a_value_its_literal_no_longer_lists():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs

    problems = check_vllm_api.literal_problems(AsyncEngineArgs, {"runner": "pooling-moved", "model": "m"}, "built")
    assert len(problems) == 1 and "runner='pooling-moved'" in problems[0] and "'pooling'" in problems[0]
    assert check_vllm_api.literal_problems(AsyncEngineArgs, {"runner": "pooling"}, "built") == []
