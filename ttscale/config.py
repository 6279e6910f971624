"""RunConfig: one frozen, validated description of an evaluation run; its hash names the run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from ttscale.errors import ConfigError, describe_validation_error
from ttscale.speculative import SpeculativeConfig
from ttscale.types import Frozen, SampleParams

# Fields that change where or how fast a run goes, not what it computes: left out of the hash,
# so a run resumes after a server comes back on another port or with other retry settings.
NOT_HASHED = {"output", "concurrency"}
CONNECTION_OPTIONS = {"base_url", "max_concurrency", "timeout_s", "max_retries", "backoff_s"}


class RunConfig(Frozen):
    """Everything that determines a run's results."""

    benchmark: str = Field(min_length=1)
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    strategy: str = "best-of-n"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    backend: str = "vllm"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    verifier: str | None = None
    verifier_options: dict[str, Any] = Field(default_factory=dict)
    speculative: SpeculativeConfig | None = None  # speculative decoding (vllm backend only)
    model: str = "smollm2-135m"
    sampling: SampleParams = SampleParams(max_tokens=256, temperature=0.8)
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    concurrency: int = Field(default=16, ge=1)
    output: Path = Path("runs")

    def run_id(self) -> str:
        """A readable slug plus the hash of the canonical config (minus where/how-fast fields)."""
        fields = self.model_dump(mode="json", exclude=NOT_HASHED)
        fields["backend_options"] = {k: v for k, v in self.backend_options.items() if k not in CONNECTION_OPTIONS}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(self.benchmark).stem}-{self.strategy}").strip("-")
        return f"{slug}-{digest}"

    def problem_seed(self, problem_id: str) -> int:
        """A per-problem request seed: stable across resumes, concurrency and problem order."""
        digest = hashlib.sha256(f"{self.seed}|{problem_id}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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
