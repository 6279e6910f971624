"""`replay`: a recorded best-of-N run's samples served again, without generating.

`ttscale eval -s best-of-n --backend replay --backend-option run=RUN_DIR -v VERIFIER ...` scores and
selects the samples RUN_DIR recorded with a new verifier (e.g. one trained later), through the
same runner, verifier and meters as a live run. The generation cost is the recorded one, priced
again from its token counts (one prefill of the prompt, the samples' decoding); the verifier's is
measured now. Only requests that best-of-N makes are served: the problem's prompt, no assistant
prefix, at most the recorded N samples, with the recorded run's sampling settings (anything
else would not be what was recorded, and is refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ttscale.analysis.runs import RecordedModel, load_run, run_prompts
from ttscale.errors import ConfigError
from ttscale.types import Completion, Generation, GenRequest


def _prompt_key(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return json.dumps([m.model_dump() for m in prompt], sort_keys=True)


class ReplayBackend:
    """Serves each problem's recorded samples, in recorded order, for the recorded run's prompts."""

    def __init__(self, model: str, *, run: str | Path):
        self.recorded = load_run(run)
        if self.recorded.kind != "best-of-n":
            raise ConfigError(f"{run}: replay serves best-of-N runs (one request of N samples per problem); this run is {self.recorded.config.strategy!r}")
        if model not in (self.recorded.config.model, self.recorded.model):
            raise ConfigError(f"{run} was recorded with model {self.recorded.config.model!r}; pass --model {self.recorded.config.model}")
        cost_model = self.recorded.cost_model
        self.model = RecordedModel(self.recorded.model, cost_model.num_params, cost_model.shape)
        self.sampling = self.recorded.config.sampling
        problems = run_prompts(self.recorded)
        self._records = {_prompt_key(problems[r.problem_id].prompt): r for r in self.recorded.records}
        self.engine_settings = {"replayed_run": str(self.recorded.dir), "recorded_backend": self.recorded.backend_info.get("backend")}

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """The recorded samples of each request's problem (the first n)."""
        return [self._replay(request) for request in requests]

    def _replay(self, request: GenRequest) -> Generation:
        record = self._records.get(_prompt_key(request.prompt))
        if record is None:
            raise ConfigError(f"{self.recorded.dir} recorded no problem with this prompt; evaluate the benchmark, options and "
                              "--limit the run was recorded with (a subset of its problems is fine)")
        params, recorded = request.params, self.sampling
        if params.extras():  # recorded samples were drawn without them
            raise ConfigError(f"replay of {self.recorded.dir} cannot honour {', '.join(params.extras())}: it serves "
                              "the recorded samples; drop it")
        differs = [name for name in ("temperature", "top_p", "max_tokens") if getattr(params, name) != getattr(recorded, name)]
        if request.prefix or params.stop or differs or params.n > record.n:
            what = (f"sampling {', '.join(f'{d}={getattr(params, d)}' for d in differs)} (recorded: "
                    f"{', '.join(f'{d}={getattr(recorded, d)}' for d in differs)})" if differs else
                    f"n={params.n} of {record.n} recorded samples" if params.n > record.n else "a continuation or stop strings")
            raise ConfigError(f"replay of {self.recorded.dir} cannot serve {what}: it serves best-of-N's requests with the "
                              "recorded settings; pass the recorded --temperature, --top-p, --max-tokens and at most its N")
        samples = record.samples[: params.n]
        completions = tuple(
            Completion(text=s.text, num_tokens=s.num_tokens, finish_reason="length" if s.num_tokens >= recorded.max_tokens else "stop")
            for s in samples
        )
        return Generation(completions=completions, prompt_tokens=int(record.cost.get("prompt_tokens", 0)))

    async def close(self) -> None:
        """Nothing to release."""
