"""RunConfig: one frozen, validated description of an evaluation run; its hash names the run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ttscale.errors import ConfigError, describe_validation_error
from ttscale.problems import derive_seed
from ttscale.speculative import SpeculativeConfig
from ttscale.types import SAMPLING_EXTRAS, Frozen, SampleParams

# Fields that change where or how fast a run goes, not what it computes: left out of the hash,
# so a run resumes after a server comes back on another port or with other retry settings.
NOT_HASHED = {"output", "concurrency", "ray", "replicas", "replica_gpus"}
SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")
CONNECTION_OPTIONS = {"base_url", "max_concurrency", "timeout_s", "max_retries", "backoff_s"}


class PluginSpec(Frozen):
    """The plugins to build, each with its options (the backend and its model, the strategy, the
    verifier), and the sampling they run with: what RunConfig and `ttscale serve`'s ServeSettings
    share. A RunConfig's run id hashes these fields by name, so their names and shapes stay."""

    strategy: str = Field("best-of-n", description="a registered strategy, e.g. best-of-n, beam-search")
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="the strategy's options, e.g. n")
    backend: str = Field("vllm", description="vllm (in-process engine), openai (an upstream OpenAI-compatible server) or fake")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="backend options, e.g. base_url")
    verifier: str | None = Field(None, description="a registered verifier, e.g. llm-judge-prm; None: no verifier")
    verifier_options: dict[str, Any] = Field(default_factory=dict, description="the verifier's options")
    model: str = Field("smollm2-135m", description="the model the backend serves: an embedded name, a local directory or a hub id")
    sampling: SampleParams = Field(SampleParams(max_tokens=256, temperature=0.8), description="sampling settings")


class RunConfig(PluginSpec):
    """Everything that determines a run's results (the plugins and sampling: PluginSpec's fields)."""

    benchmark: str = Field(min_length=1)
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    speculative: SpeculativeConfig | None = None  # speculative decoding (vllm backend only)
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    concurrency: int = Field(default=16, ge=1, description="Problems in flight at once (per replica with ray).")
    output: Path = Path("runs")
    shard: str | None = Field(
        default=None,
        description="'I/K': run only the problems whose stable id hash (sha256) mod K is I, in a run "
        "directory of its own; `ttscale merge` joins the K shards into one run.",
    )
    split: Literal["a", "b"] | None = Field(
        default=None,
        description="Evaluate only one half of the problems: a (where policies and verifiers are fitted) or "
        "b (held out), by a stable hash of each problem id (ttscale.problems.split_of); after limit.",
    )
    ray: str | None = Field(
        default=None,
        description="Run on Ray: 'local' starts a cluster on this machine, 'HOST:PORT' (or ray://...) "
        "joins one. Where the run goes, not what it computes: not part of the run id.",
    )
    replicas: int = Field(default=1, ge=1, description="Engine replicas (Ray actors) with ray; each holds its own backend.")
    replica_gpus: float | None = Field(
        default=None, ge=0,
        description="GPUs per replica with ray (default: 1 where the cluster has GPUs, else 0).",
    )

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = SHARD_PATTERN.match(value.strip())
        if not match:
            raise ValueError("expected I/K, e.g. 0/4 (shard I of K, counting from 0)")
        index, count = int(match[1]), int(match[2])
        if count < 1 or index >= count:
            raise ValueError(f"shard index must be in 0..K-1 and K >= 1, got {index}/{count}")
        return f"{index}/{count}"

    @model_validator(mode="after")
    def _check_scaleout(self) -> "RunConfig":
        if self.ray is None and (self.replicas != 1 or self.replica_gpus is not None):
            raise ValueError("replicas and replica_gpus need ray: pass --ray local or --ray HOST:PORT")
        return self

    def shard_of(self) -> tuple[int, int] | None:
        """(I, K) of a shard run; None when the run takes every problem."""
        if self.shard is None:
            return None
        index, count = self.shard.split("/")
        return int(index), int(count)

    def run_id(self) -> str:
        """A readable slug plus the hash of the canonical config (minus where/how-fast fields)."""
        fields = self.model_dump(mode="json", exclude=NOT_HASHED)
        fields["backend_options"] = {k: v for k, v in self.backend_options.items() if k not in CONNECTION_OPTIONS}
        if self.shard is None:  # runs that take every problem keep the ids they had before shards existed
            del fields["shard"]
        if self.split is None:  # likewise runs of every problem keep the ids they had before splits existed
            del fields["split"]
        # and runs that set none of vLLM's extra sampling parameters keep the ids they had before those existed
        for name in SAMPLING_EXTRAS:
            if fields["sampling"].get(name) is None:
                fields["sampling"].pop(name, None)
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        split = f"-split{self.split}" if self.split else ""
        shard = f"-shard{self.shard.replace('/', 'of')}" if self.shard else ""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(self.benchmark).stem}-{self.strategy}{split}{shard}").strip("-")
        return f"{slug}-{digest}"

    def problem_seed(self, problem_id: str) -> int:
        """A per-problem request seed: stable across resumes, concurrency and problem order."""
        return derive_seed(self.seed, problem_id)

    @classmethod
    def from_flags(cls, flags: dict[str, Any], file_values: dict[str, Any] | None = None, where: str = "eval") -> "RunConfig":
        """The run `ttscale eval`'s flags describe, over a config file's values: the one mapping
        from flags to fields. A flag of None was not given; option dicts (-B/-S/-V/--backend-option,
        already KEY=VALUE-parsed) merge over the file's; --split all means every problem."""
        values = dict(file_values or {})
        given = {name: value for name, value in flags.items() if value is not None}
        values.update({name: given[name] for name in FIELD_FLAGS if name in given})
        if given.get("split") == "all":
            values["split"] = None
        sampling = {**(values.get("sampling") or {}), **{name: given[name] for name in SAMPLING_FLAGS if name in given}}
        if sampling:  # over RunConfig's default sampling, not SampleParams' own defaults
            values["sampling"] = {**cls.model_fields["sampling"].default.model_dump(), **sampling}
        for section in ("strategy_options", "verifier_options", "benchmark_options", "backend_options"):
            values[section] = {**values.get(section, {}), **given.get(section, {})}
        values["strategy_options"].update({name: given[name] for name in STRATEGY_FLAGS if name in given})
        values["backend_options"].update({name: given[name] for name in BACKEND_FLAGS if name in given})
        if "data_file" in given:
            values["benchmark_options"]["data_file"] = str(given["data_file"])
        if "speculative" in given or "num_speculative_tokens" in given:
            values["speculative"] = speculative_section(values.get("speculative"), given.get("speculative"), given.get("num_speculative_tokens"))
        config = build_config(values, where=where)
        if "dtype" in given and config.backend != "vllm":
            raise ConfigError(f"--dtype sets the vllm engine's dtype; the {config.backend} backend has none to set")
        return config


# `ttscale eval`'s flags by where they go (RunConfig.from_flags): a field, a sampling parameter,
# a strategy option (--n is option n), a backend option.
FIELD_FLAGS = ("benchmark", "strategy", "limit", "model", "backend", "seed", "output", "concurrency", "ray",
               "replicas", "replica_gpus", "shard", "split", "verifier")
SAMPLING_FLAGS = ("temperature", "top_p", "max_tokens")
STRATEGY_FLAGS = ("n", "selection", "beam_width", "lookahead", "aggregation", "ratio")
BACKEND_FLAGS = ("base_url", "dtype")


def speculative_section(current: dict[str, Any] | None, method: str | None, num_tokens: int | None) -> dict[str, Any]:
    """The run config's `speculative` section from --speculative / --num-speculative-tokens."""
    section = dict(current or {})
    if method is not None:
        if method == "ngram":
            section["method"] = "ngram"
        else:
            section.update({"method": "draft_model", "model": method})
    if num_tokens is not None:
        section["num_speculative_tokens"] = num_tokens
    if "method" not in section:
        raise ConfigError("--num-speculative-tokens needs --speculative ngram or --speculative DRAFT_MODEL")
    return section


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML run config into a dict, with errors that name the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the --config path") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error}); fix the file and rerun") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of RunConfig fields, got {type(data).__name__}")
    return data


def build_config(values: dict[str, Any], where: str = "run config") -> RunConfig:
    """Validate values into a RunConfig, turning pydantic's error into one line."""
    try:
        return RunConfig(**values)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, where)) from None
