"""The prefill probe: hidden states of the prompt (one prefill), a ridge regressor fitted on the
fitting split only, its cost metered, policies that round-trip, and gold that never guides it.

The pooling backend here is a deterministic stand-in (FakeHiddenStates): one row per word of
the prompt, a hash of the word in most dimensions and, in the last, the number the word spells
(so a prompt's mean row carries the "hardness" its question states, and its last row nothing).
"""

import asyncio
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ttscale.allocation.evaluate import evaluate_policy
from ttscale.allocation.fit import fit_policy, fit_prefill_probe, load_fit_data
from ttscale.allocation.policy import AllocationError, AllocationPolicy
from ttscale.problems import split_of
from ttscale.analysis import difficulty as diff
from ttscale.backends.fake import FakeBackend
from ttscale.cli import app
from ttscale.errors import ConfigError
from ttscale.analysis.runs import load_run, run_prompts
from ttscale.hidden_states import HiddenStateCache, features_of, prompt_key, read_prompt
from ttscale.probe import BASELINE, PromptReader
from ttscale.testing import write_jsonl
from ttscale.types import ChatMessage, PoolRequest, PoolResult, Problem

sys.path.insert(0, str(Path(__file__).parent))
from _allocation_data import NUM_PARAMS, write_run  # noqa: E402

LEVELS = [0.0, 0.05, 0.2, 0.4, 0.7, 1.0]
GOLD = "gold-answer-{}"  # every problem's gold answer: must never reach the probe


class _Model:
    def __init__(self, name: str):
        self.name, self.num_params, self.shape = name, NUM_PARAMS, None


class FakeHiddenStates:
    """A pooling backend in the shape of VLLMPoolingBackend(mode="hidden"): one row per prompt word."""

    dim = 6

    def __init__(self, model: str = "fake"):
        self.model = _Model(model)
        self.requests = []
        self.closed = False

    @staticmethod
    def words(prompt) -> list[str]:
        text = prompt if isinstance(prompt, str) else "\n".join(m.content for m in prompt)
        return text.split()

    def row(self, word: str) -> tuple[float, ...]:
        digest = hashlib.sha256(word.encode()).digest()
        noise = [b / 255 - 0.5 for b in digest[: self.dim - 1]]
        try:
            value = float(word)
        except ValueError:
            value = 0.0
        return (*noise, value)

    async def pool(self, requests):
        self.requests.extend(requests)
        results = []
        for request in requests:
            words = self.words(request.prompt)
            results.append(PoolResult(data=tuple(self.row(w) for w in words), prompt_tokens=len(words)))
        return results

    async def generate(self, requests):
        raise AssertionError("the prefill probe must not generate")

    async def close(self):
        self.closed = True


def write_probe_run(root: Path, name: str, accuracies: list[float], *, seed: int = 0) -> Path:
    """A best-of-16 run (tests/_allocation_data.write_run) over a JSONL benchmark whose question i
    states its hardness 1 - accuracies[i] as a number, with a distinctive gold answer."""
    run = write_run(root, name, accuracies, seed=seed)
    bench = write_jsonl(root / f"{name}.jsonl", ({"id": f"p{i}", "question": f"Item p{i} has hardness {1 - p:.2f} today",
                                                  "answer": GOLD.format(i)} for i, p in enumerate(accuracies)))
    config = json.loads((run / "config.json").read_text())
    config["benchmark"] = str(bench)
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def accuracies():
    rng = random.Random(3)
    return [rng.choice(LEVELS) for _ in range(120)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, accuracies):
    return write_probe_run(tmp_path_factory.mktemp("runs"), "bon", accuracies)


@pytest.fixture(scope="module")
def readers():
    """Every FakeHiddenStates the readers started (one per engine start)."""
    return []


def reader_for(cache: Path, started: list) -> PromptReader:
    def factory(model: str):
        backend = FakeHiddenStates()
        started.append(backend)
        return backend

    return PromptReader(cache, backend_factory=factory)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features") / "policy.features.npz"


@pytest.fixture(scope="module")
def policy(run_dir, cache, readers):
    return fit_policy([run_dir], split="a", statistic="prefill", prompts=reader_for(cache, readers))


def test_features_are_the_last_row_and_the_mean_and_keys_name_model_and_prompt():
    features = features_of(PoolResult(data=((1.0, 2.0), (3.0, 6.0)), prompt_tokens=2))
    assert features.last.tolist() == [3.0, 6.0] and features.mean.tolist() == [2.0, 4.0] and features.prompt_tokens == 2
    assert features.vector("last+mean").tolist() == [3.0, 6.0, 2.0, 4.0]
    prompt = (ChatMessage(role="user", content="1 + 1"),)
    assert prompt_key("a", prompt) == prompt_key("a", prompt)
    assert prompt_key("a", prompt) != prompt_key("b", prompt)
    assert prompt_key("a", prompt) != prompt_key("a", (ChatMessage(role="user", content="1 + 2"),))
    with pytest.raises(ConfigError, match="one hidden-state row per prompt token"):
        features_of(PoolResult(data=(), prompt_tokens=0))


def test_regressor_is_fitted_on_split_a_only_and_reads_no_grade_of_split_b(tmp_path, run_dir, accuracies, policy):
    assert policy.version == 3 and policy.probe.is_prefill and policy.probe.k0 == 0
    assert policy.probe.regressor.problems == len(policy.problem_ids) > 40
    assert all(split_of(p) == "a" for p in policy.problem_ids)
    # The hardness is in the mean row, not in the last one (the template's last word): auto finds it.
    scores = policy.probe.regressor.cv_spearman
    assert set(scores) == {"last", "mean", "last+mean", BASELINE} and policy.probe.regressor.pooling != "last"
    assert scores[policy.probe.regressor.pooling] > 0.8 and scores["last"] < scores["mean"]
    # Other grades for every split-b problem: the same regressor, edges and tables.
    flipped = [1.0 - p if split_of(f"p{i}") == "b" else p for i, p in enumerate(accuracies)]
    other = write_probe_run(tmp_path, "flipped", flipped)
    # Split-a problems get the same samples only if the generator draws them alike: same seed, same
    # order, and the split-a records are copied from the original run to be sure.
    original = {json.loads(line)["problem_id"]: line for line in (run_dir / "samples.jsonl").read_text().splitlines()}
    lines = [original[json.loads(line)["problem_id"]] if split_of(json.loads(line)["problem_id"]) == "a" else line
             for line in (other / "samples.jsonl").read_text().splitlines()]
    (other / "samples.jsonl").write_text("\n".join(lines) + "\n")
    refit = fit_policy([other], split="a", statistic="prefill", prompts=PromptReader(tmp_path / "f.npz", backend_factory=lambda m: FakeHiddenStates()))
    assert refit.probe.regressor == policy.probe.regressor and refit.probe.edges == policy.probe.edges
    assert refit.predicted_tables == policy.predicted_tables


def test_the_regressor_refuses_problems_outside_the_fitting_split(run_dir, cache):
    data = load_fit_data([run_dir], "all", statistic="prefill", prompts=PromptReader(cache, backend_factory=None))
    assert {split_of(p) for p in data.problems} == {"a", "b"}
    with pytest.raises(ConfigError, match="not in split 'a'.*fitting split only"):
        fit_prefill_probe(data, "a")


def test_held_out_evaluation_refuses_fitted_problems_and_reports_the_probe(policy, run_dir, cache, accuracies):
    reader = PromptReader(cache, backend_factory=None)  # every prompt was read at fit time: no engine
    with pytest.raises(AllocationError, match="not held out"):
        evaluate_policy(policy, [run_dir], split="a", prompts=reader)
    with pytest.raises(AllocationError, match="pass prompts="):
        evaluate_policy(policy, [run_dir], split="b")
    report = evaluate_policy(policy, [run_dir], split="b", prompts=reader)
    held_out = [f"p{i}" for i in range(len(accuracies)) if split_of(f"p{i}") == "b"]
    assert report["problems"] == len(held_out)
    probe = report["probe"]
    assert probe["kind"].startswith("prefill probe")
    assert sum(map(sum, probe["confusion"])) == len(held_out)
    assert probe["spearman_with_pass1"] > 0.8  # the stated hardness ranks the held-out problems
    low, high = probe["spearman_95ci"]
    assert low <= probe["spearman_with_pass1"] <= high
    assert report["bin_agreement"] == pytest.approx(np.trace(np.asarray(probe["confusion"])) / len(held_out))
    # One prefill of the prompt, nothing generated: 2·P per prompt token (the fake model has no shape).
    prompts = run_prompts(load_run(run_dir))
    expected = np.mean([2.0 * NUM_PARAMS * len(FakeHiddenStates.words(prompts[p].prompt)) for p in held_out])
    assert probe["mean_flops"] == pytest.approx(expected)
    assert probe["flops_vs_one_sample"] < 1.0
    for row in report["rows"]:
        if row["mode"] == "predicted":
            assert all(label.startswith("prefill probe + ") for label in row["settings"])


def test_features_are_read_once_and_cached(run_dir, cache, readers, policy):
    assert len(readers) == 1 and readers[0].closed  # the fit started one engine, for every prompt, and closed it
    started = []
    fit_policy([run_dir], split="a", statistic="prefill", prompts=reader_for(cache, started))
    assert started == []  # all from the cache
    assert len(HiddenStateCache(cache)) == len(readers[0].requests) == 120  # both splits' prompts, read once each
    with pytest.raises(ConfigError, match="lacks the features of 120 prompts"):
        PromptReader(cache.with_name("empty.npz"), backend_factory=None).features_for(load_run(run_dir))


def test_gold_never_reaches_the_probe(policy, readers):
    pooled = " ".join(json.dumps(r.model_dump()) for r in readers[0].requests)
    assert "hardness" in pooled and "gold-answer" not in pooled
    reader = FakeHiddenStates()
    secret = Problem(id="x", question="q", prompt=(ChatMessage(role="user", content="Item p9 has hardness 0.50 today"),),
                     answer="SECRET-GOLD")
    plan = policy.allocate(secret, budget_samples=16, backend=FakeBackend("fake", num_params=NUM_PARAMS), probe=True,
                           probe_backend=reader)
    assert "SECRET" not in json.dumps([r.model_dump() for r in reader.requests])
    assert plan.problem.answer is None


def test_policy_round_trips_and_versions_stay_honest(policy, tmp_path, run_dir):
    path = policy.save(tmp_path / "p.json")
    raw = json.loads(path.read_text())
    assert raw["version"] == 3 and raw["probe"]["statistic"] == "prefill" and len(raw["probe"]["regressor"]["coef"]) > 0
    assert AllocationPolicy.load(path) == policy
    # A sampling-probe policy is written exactly as version 2 was: no regressor key, so older readers take it.
    sampling = fit_policy([run_dir], split="a")
    raw2 = json.loads(sampling.save(tmp_path / "s.json").read_text())
    assert raw2["version"] == 2 and "regressor" not in raw2["probe"]
    assert AllocationPolicy.load(tmp_path / "s.json") == sampling
    # A version that disagrees with the probe, or one this ttscale does not know, is refused.
    (tmp_path / "bad.json").write_text(json.dumps({**raw, "version": 2}))
    with pytest.raises(ConfigError, match="version 3"):
        AllocationPolicy.load(tmp_path / "bad.json")
    (tmp_path / "new.json").write_text(json.dumps({**raw, "version": 4}))
    with pytest.raises(ConfigError, match="reads versions 2 and 3"):
        AllocationPolicy.load(tmp_path / "new.json")


def test_allocate_runs_the_prefill_probe_and_meters_its_cost(policy):
    generator = FakeBackend("fake", answer_key={"2 + 2": "4"}, accuracy=0.5, num_params=NUM_PARAMS)
    reader = FakeHiddenStates()
    prompt = "What is 2 + 2? hardness 0.10"
    plan = policy.allocate(prompt, budget_samples=16, backend=generator, probe=True, probe_backend=reader)
    assert generator.requests == []  # the probe drew no sample
    assert len(reader.requests) == 1 and plan.bin_source == "predicted"
    tokens = len(FakeHiddenStates.words(plan.problem.prompt))
    cost = plan.probe.cost
    assert (cost.calls, cost.prompt_tokens, cost.generated_tokens) == (1, tokens, 0)
    assert cost.flops == cost.structural_flops == 2.0 * NUM_PARAMS * tokens
    features, _ = asyncio.run(read_prompt(FakeHiddenStates(), plan.problem.prompt))
    predicted = policy.probe.regressor.predict(features)
    assert plan.probe.metadata["predicted_pass1"] == predicted
    assert plan.bin == diff.assign_bins([predicted], policy.probe.edges)[0]
    assert plan.entry == policy.choose(plan.bin, budget_samples=16, source="predicted")
    assert plan.describe().startswith("prefill probe + ")
    trace = asyncio.run(plan.run(generator))
    assert len(trace.candidates) == plan.setting.samples  # nothing to reuse: the setting runs in full
    assert trace.metadata["probe_cost"]["flops"] == cost.flops
    generated = sum(c.num_tokens for c in trace.candidates)
    assert trace.cost.generated_tokens == generated and trace.cost.prompt_tokens > tokens
    # A hard prompt and an easy one land in bins in the order of their stated hardness.
    hard = policy.allocate("hardness 1.00", budget_samples=16, backend=generator, probe=True, probe_backend=reader)
    easy = policy.allocate("hardness 0.00", budget_samples=16, backend=generator, probe=True, probe_backend=reader)
    assert hard.probe.metadata["predicted_pass1"] < easy.probe.metadata["predicted_pass1"] and hard.bin <= easy.bin


def test_allocate_says_what_the_prefill_probe_needs(policy):
    generator = FakeBackend("fake", num_params=NUM_PARAMS)
    with pytest.raises(AllocationError, match="probe_backend="):
        policy.allocate("1 + 1", budget_samples=16, backend=generator, probe=True)
    with pytest.raises(AllocationError, match="not 'other'"):
        policy.allocate("1 + 1", budget_samples=16, backend=generator, probe=True, probe_backend=FakeHiddenStates("other"))
    # probe=False and budgets where the probe does not pay never touch the pooling backend.
    reader = FakeHiddenStates()
    plan = policy.allocate("1 + 1", budget_samples=16, backend=generator, probe=False, probe_backend=reader)
    assert plan.bin_source == "unprobed" and reader.requests == []


def test_cli_fits_and_evaluates_the_prefill_probe(tmp_path, run_dir, cache):
    # The cache at the CLI's default place (next to the policy) holds every prompt: no engine starts.
    (tmp_path / "p.features.npz").write_bytes(cache.read_bytes())
    runner = CliRunner()
    result = runner.invoke(app, ["allocate", "fit", str(run_dir), "--split", "a", "--probe", "prefill", "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "0 prompts read by the engine" in result.output and "out-of-fold Spearman" in result.output
    assert AllocationPolicy.load(tmp_path / "p.json").probe.is_prefill
    result = runner.invoke(app, ["allocate", "eval", str(tmp_path / "p.json"), str(run_dir), "--split", "b", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "Spearman with pass@1" in result.output and "oracle bin (rows)" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["probe"]["confusion"]
    result = runner.invoke(app, ["allocate", "fit", str(run_dir), "--probe", "prefill", "--pooling", "first", "-o", str(tmp_path / "q.json")])
    assert result.exit_code != 0 and "--pooling must be" in result.output


@pytest.mark.engine
def test_vllm_hidden_states_pool_one_row_per_prompt_token():
    """The real pooling engine (SmolLM2, mode "hidden"): one final-hidden-state row per prompt token,
    d_model wide; the prefill metered with the model's shape; the same prompt reads the same."""
    from ttscale.backends.vllm_pooling import VLLMPoolingBackend
    from ttscale.cost import CostModel

    async def main():
        backend = VLLMPoolingBackend("smollm2-135m", mode="hidden", max_model_len=1024)
        try:
            prompts = [(ChatMessage(role="user", content="What is 3 + 4?"),), (ChatMessage(role="user", content="What is 37 * 81 - 12?"),),
                       (ChatMessage(role="user", content="What is 3 + 4?"),)]
            read = [await read_prompt(backend, p) for p in prompts]
            ids = [backend._prompt_ids(PoolRequest(prompt=p)) for p in prompts]
            return backend.model, read, ids
        finally:
            await backend.close()

    model, read, ids = asyncio.run(main())
    assert model.shape is not None
    for (features, cost), token_ids in zip(read, ids):
        assert features.prompt_tokens == len(token_ids) == cost.prompt_tokens
        assert features.last.shape == features.mean.shape == (model.shape.d_model,)
        assert np.isfinite(features.last).all() and np.linalg.norm(features.last) > 0
        assert cost.generated_tokens == 0 and cost.flops == pytest.approx(float(CostModel.for_model(model).prefill(len(token_ids), 0)))
    assert ids[0][-1] == ids[1][-1]  # both end with the chat template's generation prompt
    assert np.allclose(read[0][0].last, read[2][0].last, atol=1e-4) and not np.allclose(read[0][0].mean, read[1][0].mean, atol=1e-3)


def test_pooled_runs_over_two_benchmarks_read_every_prompt_with_one_engine_start(tmp_path, accuracies):
    first = write_probe_run(tmp_path, "one", accuracies[:60])
    second = write_probe_run(tmp_path, "two", accuracies[60:], seed=1)
    # Other ids in the second run and its benchmark (as two `-B terms=...` runs have); each run's prompts
    # come from its own benchmark.
    (second / "samples.jsonl").write_text((second / "samples.jsonl").read_text().replace('"problem_id": "p', '"problem_id": "q'))
    (tmp_path / "two.jsonl").write_text((tmp_path / "two.jsonl").read_text().replace('"id": "p', '"id": "q'))
    started = []
    reader = reader_for(tmp_path / "f.npz", started)
    features = reader.features_for(load_run(first), load_run(second))
    assert len(started) == 1 and len(features) == 120 and {p[0] for p in features} == {"p", "q"}
    distinct = {prompt_key("fake", q.prompt) for run in (first, second) for q in run_prompts(load_run(run)).values()}
    assert reader.computed == len(distinct) < 120  # each distinct prompt of both benchmarks once (some questions repeat)


def test_serve_runs_a_prefill_policy_with_its_pooling_engine(tmp_path, policy):
    """`ttscale serve --policy` with a prefill-probe policy: the budget header makes the policy
    probe the prompt on the pooling engine, and the response names the bin; without an
    in-process engine to pool from, the server refuses to start, saying what to do."""
    import openai
    from fastapi.testclient import TestClient

    from ttscale.serve.app import create_app
    from ttscale.serve.settings import ServeSettings
    from ttscale.serve.state import ServerState

    path = policy.save(tmp_path / "prefill.json")
    reader = FakeHiddenStates()
    settings = ServeSettings(backend="fake", model="fake", policy=path)
    state = asyncio.run(ServerState.start(settings, backend=FakeBackend("fake", num_params=NUM_PARAMS), probe_backend=reader))
    with TestClient(create_app(state)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        response = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "Item q has hardness 0.00 today"}],
                                                  extra_headers={"X-TTS-Budget-Samples": "16"})
    block = response.model_extra["ttscale"]
    assert reader.requests and "hardness 0.00" in json.dumps(reader.requests[0].model_dump())
    chosen = block["policy"]
    assert chosen["budget_samples"] == 16 and chosen["bin_source"] == "predicted" and isinstance(chosen["bin"], int)
    assert chosen["setting"].startswith("prefill probe + ")
    with pytest.raises(ConfigError, match="--backend vllm"):
        asyncio.run(ServerState.start(settings))
