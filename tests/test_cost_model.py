"""The cost model against hand-computed values for the embedded model's shape (SmolLM2-135M),
and one case against the Kinetics repo's reference `dense_cost`."""

import json
import logging

import numpy as np
import pytest

from ttscale.backends.fake import FakeBackend
from ttscale.cost import (
    KINETICS_INTENSITY,
    CostMeter,
    CostModel,
    kinetics_decode_eflops,
    subsample_costs,
    token_flops,
)
from ttscale.modelshape import ModelShape, estimate_num_params, load_shape, shape_from_config
from ttscale.types import GenRequest, PoolRequest, PoolResult, SampleParams

# config.json of the embedded smollm2-135m (~/.cache/ttscale/models/smollm2-135m), as converted.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "tie_word_embeddings": True, "vocab_size": 49152,
}
P = 134_515_008  # counted from its safetensors: 49152·576 + 30·3,540,096 + 576
SHAPE_ARGS = {"n_layers": 30, "d_model": 576, "n_heads": 9, "n_kv_heads": 3, "head_dim": 64}
SMOLLM2 = ModelShape(num_params=P, **SHAPE_ARGS)
D = 2 * 30 * 3 * 64  # 11,520 KV elements per token
ATTN = 4 * 30 * 576  # 69,120: attention FLOPs per unit of context length, per token


def hand_token_flops(context_length: int) -> int:
    return 2 * (P + 2 * 30 * 576 * context_length)


def test_shape_from_the_embedded_config():
    shape = shape_from_config(SMOLLM2_CONFIG)
    assert shape == SMOLLM2
    assert estimate_num_params(SMOLLM2_CONFIG) == 49152 * 576 + 30 * (
        576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536 + 2 * 576
    ) + 576 == P
    assert shape.kv_per_token == D == 11_520
    assert shape.gqa_ratio == 3


def test_load_shape_reads_a_model_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    assert load_shape(tmp_path) == SMOLLM2  # no weights: P estimated from the config
    assert load_shape(tmp_path / "missing") is None


def test_token_flops_at_a_context_length():
    assert token_flops(SMOLLM2, 100) == hand_token_flops(100) == 2 * (134_515_008 + 3_456_000) == 275_942_016


def smollm2_fake(script, **options) -> FakeBackend:
    return FakeBackend(script=script, num_params=P, shape=SHAPE_ARGS, block_size=100, **options)


async def test_generation_prefills_once_and_decodes_every_completion_at_its_positions():
    meter = CostMeter(smollm2_fake(["a b c", "d e"]))
    await meter.generate([GenRequest(prompt="x y z w", params=SampleParams(n=2))])  # 4 prompt tokens
    # prefill: positions 1..4; sample 1: positions 5, 6, 7; sample 2: positions 5, 6.
    expected = sum(hand_token_flops(L) for L in [1, 2, 3, 4, 5, 6, 7, 5, 6])
    assert expected == 18 * P + ATTN * (10 + 18 + 11) == 2_423_965_824
    assert meter.cost.flops == expected
    assert meter.cost.generated_tokens == 5 and meter.cost.prompt_tokens == 4


async def test_cached_prompt_tokens_are_not_recomputed():
    backend = FakeBackend(script=["a"], num_params=P, shape=SHAPE_ARGS, block_size=2)
    meter = CostMeter(backend)
    request = GenRequest(prompt="p q r s t", params=SampleParams())  # 5 prompt tokens
    await meter.generate([request])
    first = meter.cost.flops
    assert first == sum(hand_token_flops(L) for L in [1, 2, 3, 4, 5, 6])
    await meter.generate([request])  # positions 1..4 cached (two blocks of 2)
    assert meter.cost.cached_prompt_tokens == 4
    assert meter.cost.flops - first == hand_token_flops(5) + hand_token_flops(6) == 2 * P * 2 + ATTN * 11


async def test_kinetics_eflops_by_hand():
    meter = CostMeter(smollm2_fake(["a b c", "d e"]))
    await meter.generate([GenRequest(prompt="x y z w", params=SampleParams(n=2))])
    L_in, lengths, r, I = 4, [3, 2], 3, 562.5
    compute = sum(2 * P * ell + r * (2 * L_in * D * ell + D * ell**2) for ell in lengths)
    memory = 2 * L_in * D * max(lengths) + D * sum(ell**2 for ell in lengths)
    prefill = 8 * P + ATTN * 10
    assert compute == 10 * P + 1_831_680 and memory == 426_240
    assert meter.cost.eflops == prefill + compute + I * memory == 2_663_553_024


# Kinetics' reference, copied from github.com/Infini-AI-Lab/Kinetics, cost_model/utils.py
# (`dense_cost`; the repo is not installable). Its callers pass head_dim = head_dim x layers
# (cost_model/best_of_N/cost_model_ntrial.py) and E_flops = 562.5; costs are in TFLOPs.
def dense_cost(nparams, num_attn_heads, num_kv_heads, head_dim, E_flops, context_length, generation_length, num_trials=1):
    compute_cost = (
        2 * nparams * generation_length + \
        2 * (2 * context_length + generation_length) * generation_length * num_attn_heads * head_dim
    ) * num_trials * 1e-12

    memory_cost = (
        # 2 * nparams * generation_length * num_trials + \
        2 * (2 * context_length + generation_length * num_trials) * generation_length * num_kv_heads * head_dim
    ) * E_flops * 1e-12

    return compute_cost, memory_cost


@pytest.mark.parametrize("context_length, generation_length, num_trials", [(350, 1000, 8), (57, 128, 32), (4, 1, 1)])
def test_kinetics_matches_the_reference_dense_cost(context_length, generation_length, num_trials):
    compute, memory = dense_cost(P, 9, 3, 64 * 30, 562.5, context_length, generation_length, num_trials)
    ours = kinetics_decode_eflops(SMOLLM2, context_length, [generation_length] * num_trials, KINETICS_INTENSITY)
    assert KINETICS_INTENSITY == 562.5
    assert ours == pytest.approx((compute + memory) * 1e12, rel=1e-12)


def test_intensity_is_configurable():
    low = CostModel(SMOLLM2, P, intensity=1.0).generation(10, 0, [20, 30])[1]
    high = CostModel(SMOLLM2, P, intensity=2.0).generation(10, 0, [20, 30])[1]
    assert high - low == 2 * 10 * D * 30 + D * (20**2 + 30**2)  # one more I of memory traffic


class PoolingVerifierBackend:
    """A verifier model served for pooling: reads 6 prompt tokens, 2 of them cached."""

    def __init__(self, model):
        self.model = model

    async def pool(self, requests):
        return [PoolResult(data=((0.5,),), prompt_tokens=6, cached_prompt_tokens=2) for _ in requests]


async def test_verifier_meter_prices_the_verifier_model_and_books_it_as_verifier_cost():
    verifier_shape = ModelShape(num_params=2_000_000, n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, head_dim=32)
    model = FakeBackend(num_params=2_000_000).model.__class__("judge", 2_000_000, verifier_shape)
    meter = CostMeter(PoolingVerifierBackend(model), role="verifier")
    await meter.pool([PoolRequest(prompt="six tokens read by the verifier")])
    expected = sum(2 * (2_000_000 + 2 * 4 * 128 * L) for L in [3, 4, 5, 6])  # positions 3..6
    assert meter.cost.verifier_flops == meter.cost.flops == expected
    assert meter.cost.eflops == expected  # prefill: compute-bound, eFLOPs = FLOPs
    assert meter.cost.verifier_tokens == 6 and meter.cost.verifier_calls == 1
    assert meter.cost.prompt_tokens == 0  # booked as the verifier's, not the generator's


async def test_unknown_shape_falls_back_to_2P_per_token_and_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="ttscale.cost")
    backend = FakeBackend("shapeless-model-for-test", script=["a b"], num_params=1000, block_size=100)
    meter = CostMeter(backend)
    CostMeter(backend)
    await meter.generate([GenRequest(prompt="x y z", params=SampleParams(n=3))])
    assert meter.cost.flops == meter.cost.eflops == 2 * 1000 * (3 + 3 * 2)
    warnings = [r for r in caplog.records if "shapeless-model-for-test" in r.getMessage()]
    assert len(warnings) == 1 and "2·P per token" in warnings[0].getMessage()


def test_subsample_cost_pays_the_prompt_once_and_prorates_the_verifier():
    model = CostModel(SMOLLM2, P)
    record_cost = {"prompt_tokens": 4, "cached_prompt_tokens": 0, "verifier_flops": 300.0, "wall_s": 10.0}
    priced = subsample_costs(model, record_cost, [3, 2, 5], np.array([[0, 1], [1, 2]]))
    # subset {0, 1}: the meter's example above (lengths 3 and 2), plus 2 of 3 verifier scorings
    assert priced["flops"][0] == 2_423_965_824 + 200.0
    assert priced["flops"][1] == sum(hand_token_flops(L) for L in [1, 2, 3, 4, 5, 6, 5, 6, 7, 8, 9]) + 200.0
    assert list(priced["generated_tokens"]) == [5, 7]
    assert list(priced["wall_s"]) == [5.0, 7.0]  # pro rata by generated tokens (10 s for 10)


def test_subsample_cost_prorates_speculative_decoding_as_the_meter_prices_it():
    model = CostModel(SMOLLM2, P)
    record_cost = {"prompt_tokens": 4, "draft_tokens": 10, "accepted_draft_tokens": 6, "draft_flops": 5000.0}
    priced = subsample_costs(model, record_cost, [3, 2, 5], np.array([[0, 1, 2], [2, 0, 1]]))
    full = model.generation(4, 0, [3, 2, 5])[0]
    speculation = 5000.0 + 2 * P * (10 - 6)  # the drafter, and the target checking 4 rejected tokens
    assert list(priced["flops"]) == [full + speculation] * 2  # any order of all samples: the whole cost
    half = subsample_costs(model, record_cost, [3, 2, 5], np.array([[2]]))
    assert half["flops"][0] == model.generation(4, 0, [5])[0] + speculation * 5 / 10
