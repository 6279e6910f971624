"""An analysis prices a run with the model its backend.json records (no backend is rebuilt); runs
from before backend.json recorded the shape still load, priced from config.json's model, with a
warning that says so."""

import json
import logging

import pytest

from ttscale.analysis.runs import load_run
from ttscale.backends.fake import FakeBackend
from ttscale.config import RunConfig
from ttscale.errors import ConfigError
from ttscale.runner import run_eval

SHAPE = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}


async def finished_run(tmp_path):
    problems = tmp_path / "tiny.jsonl"
    problems.write_text(json.dumps({"id": "p1", "question": "What is 2 + 3?", "answer": "5"}) + "\n")
    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=tmp_path / "runs",
                       backend_options={"num_params": 5000, "shape": SHAPE}, strategy_options={"n": 2})
    return (await run_eval(config, backend=FakeBackend(num_params=5000, shape=SHAPE))).run_dir


async def test_the_recorded_model_prices_the_run(tmp_path, monkeypatch):
    run_dir = await finished_run(tmp_path)
    info = json.loads((run_dir / "backend.json").read_text())
    assert info["shape"] == {"num_params": 5000, **SHAPE}
    # Nothing is rebuilt: a config.json naming an unknown backend still loads.
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "backend": "gone"}))
    run = load_run(run_dir)
    assert run.cost_model.shape is not None and run.cost_model.shape.to_dict() == info["shape"]
    assert run.num_params == 5000 and run.model == "fake"


async def test_a_run_without_a_recorded_shape_loads_with_a_warning(tmp_path, caplog):
    run_dir = await finished_run(tmp_path)
    info = json.loads((run_dir / "backend.json").read_text())
    del info["shape"]
    (run_dir / "backend.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="ttscale.analysis.runs"):
        run = load_run(run_dir)
    assert run.cost_model.shape is None and run.num_params == 5000  # 2·P per token: the model "fake" has no config.json
    assert "backend.json records no model shape" in caplog.text
    del info["num_params"]
    (run_dir / "backend.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="records no model .* rerun it with `ttscale eval`"):
        load_run(run_dir)
