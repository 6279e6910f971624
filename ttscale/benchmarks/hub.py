"""Rows of a Hugging Face hub dataset, or of a local copy of it, for the hub-backed benchmarks.

Without a network, `datasets.load_dataset` retries for about 25 s before it gives up (measured
here), and where DNS itself hangs it can take much longer. So before asking the hub we probe it
with a short, bounded connection attempt and fail at once, telling the user how to point at a
local copy. With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, datasets reads its cache without
network calls, so we skip the probe.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, ClassVar
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

from pydantic import Field

from ttscale.benchmarks._common import MathBenchmark, read_text_lines, take
from ttscale.errors import ConfigError
from ttscale.types import Problem

PROBE_TIMEOUT_S = 5.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def load_rows(dataset: str, config: str | None, split: str, data_file: Path | None) -> list[dict[str, Any]]:
    """All rows of `dataset` (`config`, `split`) as dicts: from `data_file` if given, else from the hub."""
    if data_file is not None:
        return _local_rows(dataset, Path(data_file))
    return _hub_rows(dataset, config, split)


def _local_rows(dataset: str, path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"data file {path} for {dataset} does not exist; check -B data_file=PATH")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            # Plain json: the datasets json builder writes a cache, which a few rows do not need.
            rows = [_json_row(line, path, lineno) for lineno, line in enumerate(read_text_lines(path), start=1) if line.strip()]
        elif suffix in (".json", ".parquet"):
            import datasets

            if suffix == ".json":
                read_text_lines(path)  # names the line of a non-UTF-8 byte, which pyarrow would not

            builder = "parquet" if suffix == ".parquet" else "json"
            rows = list(datasets.load_dataset(builder, data_files=str(path), split="train"))
        else:
            raise ConfigError(f"data file {path} for {dataset}: expected .jsonl, .json or .parquet, got {suffix!r}")
    except ConfigError:
        raise
    except Exception as error:  # JSON errors, pyarrow errors: name the file and what went wrong
        raise ConfigError(f"cannot read data file {path} for {dataset}: {error}") from None
    if not all(isinstance(row, dict) for row in rows):
        raise ConfigError(f"data file {path} for {dataset}: every row must be a JSON object")
    if not rows:
        raise ConfigError(f"data file {path} for {dataset} holds no rows")
    return rows


def _json_row(line: str, path: Path, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{lineno}: not valid JSON ({error.msg}, column {error.colno}); fix or remove the line") from None


def _offline_mode() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_rows(dataset: str, config: str | None, split: str) -> list[dict[str, Any]]:
    offline = _offline_mode()
    how = (
        f"download it where a network is available (e.g. datasets.load_dataset({dataset!r}, {config!r}, "
        f"split={split!r}).to_json('{dataset.split('/')[-1]}.jsonl')) and pass -B data_file=PATH "
        f"(or --data-file PATH)"
    ) + ("" if offline else "; or set HF_HUB_OFFLINE=1 to use a copy in the datasets cache")
    if not offline:
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
        problem = _probe(endpoint)
        if problem:
            raise ConfigError(f"cannot load {dataset} from the hub ({endpoint}: {problem}); {how}")
    try:
        import datasets

        return list(datasets.load_dataset(dataset, config, split=split))
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot load {dataset} ({config or 'default'}, {split}): {first_line}; {how}") from None


def _probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to the endpoint opens within `timeout_s`, else why not.

    DNS lookups ignore socket timeouts and can hang, so the whole attempt runs in a daemon thread
    that we stop waiting for after `timeout_s`.
    """
    host, port = _first_hop(endpoint)
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as error:
            outcome.append(str(error) or type(error).__name__)

    worker = threading.Thread(target=attempt, daemon=True, name="ttscale-hub-probe")
    worker.start()
    worker.join(timeout_s + 0.5)
    if not outcome:
        return f"no answer within {timeout_s:g} s"
    return outcome[0]


class HubBenchmark(MathBenchmark):
    """Base for benchmarks read from a hub dataset (or a local copy of it, `data_file`)."""

    dataset: ClassVar[str]
    config: ClassVar[str | None] = None
    split: ClassVar[str]

    data_file: Path | None = Field(default=None, description="a local JSON/JSONL/Parquet copy of the split")
    size: int | None = Field(default=None, ge=1, description="use only the first `size` problems (None: all)")

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` problems (of the first `size`), ids checked unique."""
        rows = load_rows(self.dataset, self.config, self.split, self.data_file)
        return problems_from_rows(rows, self.problem, size=self.size, limit=limit, source=self._source())

    def problem(self, index: int, row: dict[str, Any]) -> Problem:
        """The Problem for row `index` of the split."""
        raise NotImplementedError

    def field(self, row: dict[str, Any], name: str, index: int) -> Any:
        """`row[name]`, or a ConfigError naming the row, the field and the fields there are."""
        expects = f"the {self.name} benchmark expects the schema of {self.dataset}"
        return required_field(row, name, index, source=self._source(), expects=expects)

    def _source(self) -> str:
        return str(self.data_file) if self.data_file is not None else f"{self.dataset} ({self.split})"


def problems_from_rows(
    rows: list[dict[str, Any]],
    make: Callable[[int, dict[str, Any]], Problem],
    *,
    size: int | None,
    limit: int | None,
    source: str,
) -> list[Problem]:
    """Problems built by `make` from the first `limit` of the first `size` rows, ids checked unique."""
    if size is not None:
        rows = rows[:size]
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, row in enumerate(rows[: take(len(rows), limit)]):
        problem = make(index, row)
        if problem.id in seen:
            raise ConfigError(f"{source}: problem id {problem.id!r} appears twice; ids must be unique")
        seen.add(problem.id)
        problems.append(problem)
    return problems


def required_field(row: dict[str, Any], name: str, index: int, *, source: str, expects: str) -> Any:
    """`row[name]`, or a ConfigError naming the source, the row, the field and the fields there are."""
    value = row.get(name)
    if value is None:
        raise ConfigError(
            f"{source}: row {index} has no {name!r} field (has {', '.join(map(repr, row)) or 'none'}); {expects}"
        )
    return value


def _first_hop(endpoint: str) -> tuple[str, int]:
    """The host and port a request to `endpoint` connects to first: its proxy where one is set."""
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    proxy = getproxies().get(parsed.scheme or "https")
    if proxy and not proxy_bypass(host):
        proxied = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if proxied.hostname:
            return proxied.hostname, proxied.port or (443 if proxied.scheme == "https" else 80)
    return host, port
