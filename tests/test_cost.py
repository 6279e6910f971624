import logging
import random

import numpy as np

from ttscale.backends.fake import FakeBackend
from ttscale.cost import (
    CostMeter, CostModel, PrefixLedger, cache_independent_cost, flops_known, scaled_cost, subsample_costs, sum_costs,
)
from ttscale.types import Cost, GenRequest, SampleParams


async def test_meter_counts_prompt_once_per_request_and_every_generated_token():
    backend = FakeBackend(script=["a b c", "d e"], num_params=1000, block_size=100)
    meter = CostMeter(backend)
    await meter.generate([GenRequest(prompt="x y z w", params=SampleParams(n=2))])
    cost = meter.cost
    assert cost.calls == 1
    assert cost.prompt_tokens == 4  # prefilled once, not once per sample
    assert cost.generated_tokens == 3 + 2
    assert cost.flops == 2 * 1000 * (4 + 5)


async def test_cached_prompt_tokens_cost_no_prefill_flops():
    backend = FakeBackend(script=["a"], num_params=10, block_size=2)
    meter = CostMeter(backend)
    request = GenRequest(prompt="p q r s t", params=SampleParams())
    await meter.generate([request])
    await meter.generate([request])
    assert meter.cost.prompt_tokens == 10
    assert meter.cost.cached_prompt_tokens == 4  # two full blocks of 2 seen before
    assert meter.cost.flops == 2 * 10 * ((10 - 4) + 2)


# --- Cache-independent (structural) cost ---------------------------------------------------------


def test_prefix_ledger_finds_the_longest_prefix_seen_before_across_block_boundaries():
    ledger = PrefixLedger(block_size=4)
    assert ledger.match(list("abcdefghij")) == 0
    ledger.add(list("abcdefghij"))
    assert ledger.match(list("abcdefghij")) == 10
    assert ledger.match(list("abcdefgXYZ")) == 7  # mid-block divergence
    assert ledger.match(list("abcdX")) == 4  # divergence right after a block boundary
    assert ledger.match(list("abc")) == 3
    assert ledger.match(list("abcdefghijklmn")) == 10  # longer than anything seen
    assert ledger.match(list("Xbcdefghij")) == 0
    ledger.add(list("abcdefgXYZ"))
    assert ledger.match(list("abcdefgXYW")) == 9  # the longest of two branches


async def test_continuation_is_structurally_cached_whatever_the_engine_cache_held():
    # block_size 100: the fake engine caches nothing, yet the continuation re-sends 5 known tokens
    backend = FakeBackend(script=["a b", "c"], num_params=10, block_size=100)
    meter = CostMeter(backend)
    [first] = await meter.generate([GenRequest(prompt="q1 q2 q3\n")])
    await meter.generate([GenRequest(prompt="q1 q2 q3\n", prefix=first.completions[0].text)])
    cost = meter.cost
    assert (cost.prompt_tokens, cost.cached_prompt_tokens, cost.generated_tokens) == (3 + 5, 0, 2 + 1)
    # the second prompt is the first prompt plus the first completion, all sent or generated before
    assert cost.structural_cached_prompt_tokens == 5
    assert cost.flops == 2 * 10 * (8 + 3)
    assert cost.structural_flops == cost.structural_eflops == 2 * 10 * (3 + 3)


async def test_structural_cost_is_per_problem_not_what_other_problems_left_in_the_cache():
    backend = FakeBackend(script=["a"], num_params=10, block_size=2)
    request = GenRequest(prompt="p q r s t", params=SampleParams(n=3))
    first_problem, second_problem = CostMeter(backend), CostMeter(backend)
    await first_problem.generate([request])
    await second_problem.generate([request])  # a warm engine: two blocks come from the first problem
    assert second_problem.cost.cached_prompt_tokens == 4
    assert first_problem.cost.structural_cached_prompt_tokens == second_problem.cost.structural_cached_prompt_tokens == 0
    assert first_problem.cost.structural_flops == second_problem.cost.structural_flops == first_problem.cost.flops
    assert second_problem.cost.flops == first_problem.cost.flops - 2 * 10 * 4


async def test_requests_of_one_call_share_in_order_and_n_samples_share_their_prompt():
    backend = FakeBackend(script=["a"], num_params=10, block_size=100)
    meter = CostMeter(backend)
    common = "system : be brief"
    await meter.generate([
        GenRequest(prompt=common + " one", params=SampleParams(n=4)),  # prompt counted once for 4 samples
        GenRequest(prompt=common + " two", params=SampleParams(n=4)),
    ])
    assert meter.cost.prompt_tokens == 5 + 5
    assert meter.cost.structural_cached_prompt_tokens == 4  # "system : be brief" again


async def test_backends_without_token_ids_share_prefixes_in_proportion_of_characters():
    class TextOnly:  # an HTTP server: counts, but no token ids
        def __init__(self):
            self._fake = FakeBackend(script=["a"], num_params=10, block_size=100)
            self.model = self._fake.model

        async def generate(self, requests):
            return await self._fake.generate(requests)

    meter = CostMeter(TextOnly())
    await meter.generate([GenRequest(prompt="x y z w")])
    await meter.generate([GenRequest(prompt="x y z w v u t s")])  # 8 tokens, 7 of its 15 characters seen
    assert meter.cost.structural_cached_prompt_tokens == 8 * 7 // 15


async def test_verifier_meter_books_structural_cost_as_verifier_cost():
    backend = FakeBackend(script=["Yes"], num_params=10, block_size=100)
    meter = CostMeter(backend, role="verifier")
    await meter.generate([GenRequest(prompt="judge : step one")])
    await meter.generate([GenRequest(prompt="judge : step two")])
    cost = meter.cost
    assert cost.verifier_flops == cost.flops == 2 * 10 * (4 + 1 + 4 + 1)
    assert cost.structural_verifier_flops == cost.structural_flops == 2 * 10 * (4 + 1 + 1 + 1)  # "judge : step" again


async def test_a_meter_around_the_problems_meter_finds_sharing_in_the_problems_ledger():
    backend = FakeBackend(script=["a b"], num_params=10, block_size=100)
    problem_meter = CostMeter(backend)
    depth_meter = CostMeter(problem_meter)  # e.g. revision's per-depth meters
    await problem_meter.generate([GenRequest(prompt="q1 q2 q3\n")])
    await depth_meter.generate([GenRequest(prompt="q1 q2 q3\n", prefix="a b")])
    assert depth_meter.cost.structural_cached_prompt_tokens == 5
    assert problem_meter.cost.structural_cached_prompt_tokens == 5
    assert problem_meter.cost.prompt_tokens == 3 + 5 and depth_meter.cost.prompt_tokens == 5


def test_cache_independent_cost_takes_the_structural_fields_and_keeps_old_records(caplog):
    recorded = Cost(prompt_tokens=10, cached_prompt_tokens=8, flops=100.0, eflops=150.0, verifier_flops=20.0,
                    structural_cached_prompt_tokens=3, structural_flops=140.0, structural_eflops=190.0,
                    structural_verifier_flops=30.0, wall_s=2.0).model_dump()
    priced = cache_independent_cost(recorded)
    assert (priced["cached_prompt_tokens"], priced["flops"], priced["eflops"], priced["verifier_flops"]) == (3, 140.0, 190.0, 30.0)
    assert (priced["prompt_tokens"], priced["wall_s"]) == (10, 2.0)
    assert cache_independent_cost(priced) == priced  # applying it twice changes nothing
    old = {"prompt_tokens": 10, "cached_prompt_tokens": 8, "flops": 100.0}  # before structural costs
    caplog.set_level(logging.WARNING, logger="ttscale.cost")
    assert cache_independent_cost(old) == old


def test_subsampled_and_scaled_record_costs_are_priced_cache_independently():
    model = CostModel(None, 10)  # 2·P per token
    warm = Cost(prompt_tokens=8, cached_prompt_tokens=8, generated_tokens=8, flops=160.0, eflops=160.0, verifier_flops=6.0,
                structural_cached_prompt_tokens=2, structural_flops=286.0, structural_eflops=286.0,
                structural_verifier_flops=6.0).model_dump()
    cold = {**warm, "cached_prompt_tokens": 0, "flops": 326.0, "eflops": 326.0}  # the same problem after a restart
    for record in (warm, cold):
        priced = subsample_costs(model, record, [3, 5], np.array([[0], [1]]))  # one of two samples each
        # 6 of 8 prompt tokens computed (structurally), the sample's tokens, half the verifier
        assert list(priced["flops"]) == [2 * 10 * (6 + 3) + 3.0, 2 * 10 * (6 + 5) + 3.0]
        assert scaled_cost(record, 0.5)["flops"] == 143.0
        assert scaled_cost(record, 0.5)["verifier_flops"] == 3.0


def test_costs_add_up_to_the_same_total_in_any_order():
    # A problem's concurrent calls finish in any order; the meter's total must not care.
    rng = random.Random(1)
    parts = [Cost(calls=1, flops=rng.uniform(1e15, 1e17), structural_flops=rng.uniform(1e15, 1e17)) for _ in range(50)]
    assert sum_costs(parts) == sum_costs(reversed(parts)) == sum_costs(sorted(parts, key=lambda c: c.flops))
    assert sum_costs(parts).calls == 50


async def test_a_model_of_unknown_size_has_unknown_flops_never_0():
    # FakeBackend with num_params=0 and no shape: a model nobody knows the size of (an upstream server's).
    unknown = CostMeter(FakeBackend(script=["a b c"], num_params=0), role="verifier")
    await unknown.generate([GenRequest(prompt="x y z", params=SampleParams(n=2))])
    assert not unknown.cost_model.priced
    assert unknown.cost.unpriced_calls == 1 and unknown.cost.verifier_tokens == 3 + 6  # tokens stay counted
    assert not flops_known(unknown.cost.model_dump())
    known = CostMeter(FakeBackend(script=["a b c"], num_params=1000))
    await known.generate([GenRequest(prompt="x y z", params=SampleParams())])
    assert known.cost.unpriced_calls == 0 and flops_known(known.cost.model_dump())
    # A total that holds one unpriced call is unknown, whatever else it holds.
    total = sum_costs([known.cost, unknown.cost])
    assert total.unpriced_calls == 1 and not flops_known(total.model_dump())


def test_a_summary_of_unpriced_records_says_its_flops_are_unknown():
    from ttscale.analysis.summary import FLOPS_FIELDS, summarize

    def record(cost):
        return {"problem_id": "p", "chosen_rule": "first", "selections": {"first": {"correct": True}},
                "pass_at_k": {"1": 1.0}, "candidates": [{}], "cost": Cost(**cost).model_dump()}

    summary = summarize([record({"generated_tokens": 5, "flops": 10.0}), record({"generated_tokens": 4, "unpriced_calls": 1})])
    assert summary["cost_known"] is False and summary["cost"]["generated_tokens"] == 9
    assert all(summary["cost"][name] is None for name in FLOPS_FIELDS)
    known = summarize([record({"generated_tokens": 5, "flops": 10.0})])
    assert known["cost_known"] is True and known["cost"]["flops"] == 10.0
