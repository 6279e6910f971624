"""Hidden-state reads over the pooling engine's prefix cache (issue 28 item 2), without vLLM: a fake
engine that caches whole blocks as vLLM's does and returns rows for the tokens it computed only."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from ttscale.backends.fake import FakeHiddenBackend
from ttscale.backends.vllm_pooling import VLLMPoolingBackend, reads_over_cache, rows_after_cache
from ttscale.cost import CostMeter, CostModel
from ttscale.errors import TtscaleError
from ttscale.hidden_states import step_features, step_request
from ttscale.reward_heads import LinearHead, Provenance, RewardHead
from ttscale.types import ChatMessage, PoolRequest, Problem
from ttscale.verifiers.trained import TrainedVerifier

BLOCK = 32
PROMPT = "Question: what is 12 + 30? Answer step by step.\n"
STEPS = ["First, add the tens: 10 + 30 = 40.", "Then add the ones: 40 + 2 = 42.", "The answer is \\boxed{42}."]


class CharTokenizer:
    """One token per character (a BOS first when special tokens are asked for)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]


class PrefixCachingEngine:
    """vLLM's pooling engine in miniature: a token's row depends on the tokens up to it; the cache
    keeps whole blocks of finished requests (not of those computed with it), never serves a request's last token, and a request
    that skips reading it computes everything. Only computed tokens' rows come back (ALL pooling)."""

    def __init__(self):
        self.blocks: set[tuple[int, ...]] = set()
        self.sent: list[tuple[int, bool]] = []  # (tokens, skip_reading_prefix_cache) per request

    @staticmethod
    def row(ids: list[int]) -> list[float]:
        digest = hashlib.sha256(str(ids).encode()).digest()
        return [len(ids), *(b / 255 for b in digest[:3])]

    async def encode(self, prompt, params, request_id):
        ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else prompt.prompt_token_ids
        self.sent.append((len(ids), params.skip_reading_prefix_cache))
        hit = 0
        while (not params.skip_reading_prefix_cache and hit + BLOCK <= len(ids) - 1
               and tuple(ids[: hit + BLOCK]) in self.blocks):
            hit += BLOCK
        data = np.asarray([self.row(ids[: j + 1]) for j in range(hit, len(ids))])
        await asyncio.sleep(0)  # requests in flight together are computed together: none finds another's blocks
        self.blocks.update(tuple(ids[:end]) for end in range(BLOCK, len(ids) + 1, BLOCK))
        yield SimpleNamespace(outputs=SimpleNamespace(data=data), num_cached_tokens=hit)


def backend_with_fake_engine() -> VLLMPoolingBackend:
    backend = VLLMPoolingBackend("smollm2-135m", mode="hidden")
    backend._engine, backend._tokenizer = PrefixCachingEngine(), CharTokenizer()
    return backend


def full_rows(request: PoolRequest) -> list[list[float]]:
    """What a read without any cache returns at the request's positions."""
    backend = backend_with_fake_engine()
    ids = backend._prompt_ids(request)
    return [PrefixCachingEngine.row(ids[: i + 1]) for i in backend._rows_at(request, len(ids))]


def test_rows_after_a_cached_prefix_are_indexed_from_where_it_ends():
    rows = [[5.0], [6.0], [7.0]]  # tokens 5..7 of 8 computed: 5 cached
    assert rows_after_cache(rows, 8, [5, 7]) == ([[5.0], [7.0]], 5)
    assert rows_after_cache(rows, 3, range(3)) == (rows, 0)
    with pytest.raises(TtscaleError, match="prefix cache served more"):
        rows_after_cache(rows, 8, [4, 7])  # row 4 lies in the cached prefix: the engine has no row for it
    assert reads_over_cache([40, 52], 40) and not reads_over_cache([39, 52], 40) and not reads_over_cache(range(10), 1)


def test_a_search_reads_only_its_new_step_over_the_cached_text_and_is_priced_for_it():
    backend = backend_with_fake_engine()
    meter = CostMeter(backend, role="verifier")

    async def read_steps():
        read = []
        for k in range(1, len(STEPS) + 1):  # a beam growing one step at a time, asking only for its new step
            [rows] = await step_features(meter, PROMPT, [STEPS[:k]], [k - 1])
            read.append(rows)
        return read

    read = asyncio.run(read_steps())
    for k, rows in enumerate(read, start=1):
        assert np.allclose(rows, full_rows(step_request(PROMPT, STEPS[:k], k - 1)))  # the rows a full read has there
    engine = backend._engine
    assert [skip for _, skip in engine.sent] == [False, False, False]
    cost = meter.cost
    lengths = [n for n, _ in engine.sent]
    cached = [0] + [(previous // BLOCK) * BLOCK for previous in lengths[:-1]]  # whole blocks of the text read before
    model = CostModel.for_model(backend.model)
    assert cost.verifier_tokens == sum(lengths) and cost.verifier_flops == pytest.approx(
        sum(float(model.prefill(n, c)) for n, c in zip(lengths, cached)))
    assert cost.verifier_flops < sum(float(model.prefill(n, 0)) for n in lengths)


def test_a_read_wanting_rows_inside_text_sent_before_reads_in_full():
    backend = backend_with_fake_engine()

    async def reads():
        await backend.pool([step_request(PROMPT, STEPS)])  # the whole solution first
        return await backend.pool([step_request(PROMPT, STEPS[:2]), PoolRequest(prompt=PROMPT)])

    prefix, prompt = asyncio.run(reads())
    # The two-step prefix was sent before whole: its step ends could be cached, so it skips the cache (all
    # its rows computed); so does a prompt read for every row. Both get the rows of a full read.
    assert [skip for _, skip in backend._engine.sent] == [False, True, True]
    assert prefix.cached_prompt_tokens == prompt.cached_prompt_tokens == 0
    assert np.allclose(prefix.data, full_rows(step_request(PROMPT, STEPS[:2])))
    assert len(prompt.data) == prompt.prompt_tokens == len(PROMPT) + 1


def test_the_trained_verifier_asks_only_for_steps_it_has_not_scored(tmp_path):
    dim = 8  # the fake hidden backend's rows
    value = LinearHead(feature_mean=[0.0] * dim, feature_scale=[1.0] * dim, coef=[float(i) for i in range(dim)], intercept=0.0,
                       link="identity", penalty=1.0)
    provenance = Provenance(runs=[], split_rule="", fit_problems=[], examples=0, positives=0.0, data_sha256="")
    head = RewardHead(kind="prm", label="math-shepherd", model="fake", model_path="fake", backend="fake", value=value,
                      provenance=provenance).save(tmp_path)
    problem = Problem(id="q", question="What is 12 + 30?", prompt=(ChatMessage(role="user", content="What is 12 + 30?"),), answer="42")

    def scores_of(verifier, solutions):
        return asyncio.run(verifier.score_steps(problem, solutions, CostMeter(verifier.backend, role="verifier")))

    searching = TrainedVerifier(path=str(head))
    by_step = [scores_of(searching, [STEPS[:k], STEPS[:k - 1] + ["Or else: 40 + 3 = 43."]]) for k in range(1, 4)]
    assert [r.positions for r in searching.backend.requests[2:]] == [(len(STEPS[0]) + 2 + len(STEPS[1]),),
                                                                     (len(STEPS[0]) + 2 + len("Or else: 40 + 3 = 43."),),
                                                                     (len("\n\n".join(STEPS)),),
                                                                     (len("\n\n".join(STEPS[:2] + ["Or else: 40 + 3 = 43."])),)]
    assert isinstance(searching.backend, FakeHiddenBackend)
    whole = TrainedVerifier(path=str(head))  # reads each solution whole: the same scores
    assert by_step[-1] == scores_of(whole, [STEPS, STEPS[:2] + ["Or else: 40 + 3 = 43."]])


@pytest.mark.engine
def test_vllm_reads_a_new_step_over_the_cached_text_with_the_rows_of_a_full_read():
    """The real pooling engine (SmolLM2, mode "hidden"): a beam's new step read over the text read
    before computes only what follows its cached blocks, reports them cached, and gives the rows a
    full read gives at the step ends; a read wanting a row inside sent text reads in full."""
    prompt = (ChatMessage(role="user", content="What is 12 + 30? Think step by step, one step per line, and box the answer."),)

    async def main():
        # float32, as conftest.ENGINE_TEST_DTYPE: bfloat16 rounds differently with what the cache held and the batch
        backend = VLLMPoolingBackend("smollm2-135m", mode="hidden", max_model_len=1024, dtype="float32")
        try:
            steps = [(await backend.pool([step_request(prompt, STEPS[:k], k - 1)]))[0] for k in range(1, len(STEPS) + 1)]
            [whole] = await backend.pool([step_request(prompt, STEPS)])  # every step end, one inside sent text: a full read
            return steps, whole
        finally:
            await backend.close()

    steps, whole = asyncio.run(main())
    assert steps[0].cached_prompt_tokens == 0 and whole.cached_prompt_tokens == 0
    assert all(r.cached_prompt_tokens > 0 and r.cached_prompt_tokens % 32 == 0 for r in steps[1:])
    assert np.allclose(np.asarray([r.data[0] for r in steps]), np.asarray(whole.data), atol=1e-3)


def test_beams_sharing_an_unread_prompt_find_it_cached_after_the_first_is_read():
    backend = backend_with_fake_engine()
    children = [step_request(PROMPT, [step]) for step in STEPS]  # a search's first step: beams share the prompt only
    results = asyncio.run(backend.pool(children))
    assert [r.cached_prompt_tokens for r in results] == [0] + [(len(PROMPT) // BLOCK) * BLOCK] * 2
    for request, result in zip(children, results):
        assert np.allclose(result.data, full_rows(request))
    # Reads that want every row (a prompt's features) gain nothing from the cache: they go together, in full.
    again = backend_with_fake_engine()
    asyncio.run(again.pool([PoolRequest(prompt=PROMPT), PoolRequest(prompt=PROMPT + "Another.")]))
    assert [skip for _, skip in again._engine.sent] == [False, True]
