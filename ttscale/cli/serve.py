"""The `ttscale serve` command: an OpenAI-compatible endpoint (ttscale.serve)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from ttscale import registry
from ttscale.cli.common import parse_options
from ttscale.errors import ConfigError, describe_validation_error
from ttscale.protocols import needs_verifier, samples_per_problem
from ttscale.serve.settings import LIMITED, ServeSettings
from ttscale.types import ORACLE_RULE, SampleParams


def serve_command(
    policy: Optional[Path] = typer.Option(None, "--policy", help="A fitted allocation policy (ttscale allocate fit): a request's budget (X-TTS-Budget-Flops, X-TTS-Budget-Samples, or extra_body ttscale.budget_*) then picks the setting per prompt, probe included."),
    backend: str = typer.Option("vllm", "--backend", help="vllm (in-process engine), openai (an upstream OpenAI-compatible server, see --base-url) or fake (tests)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Embedded model name (smollm2-135m), a local HF directory, or a hub id; for --backend openai, the upstream's model name."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Upstream URL for --backend openai, e.g. http://127.0.0.1:8001/v1."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (another than loopback needs an API key)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on (1-65535)."),
    strategy: str = typer.Option("best-of-n", "--strategy", "-s", help="Default strategy, for requests that name none."),
    n: int = typer.Option(1, "--n", help="Default N: samples per request of the default strategy (a request's n choices raises it)."),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-S", help="Default strategy option KEY=VALUE, e.g. -S selection=majority."),
    verifier: Optional[str] = typer.Option(None, "--verifier", "-v", help="Default verifier, e.g. llm-judge-prm (gold-reading verifiers are refused)."),
    verifier_option: Optional[list[str]] = typer.Option(None, "--verifier-option", "-V", help="Verifier option KEY=VALUE (for --verifier)."),
    backend_option: Optional[list[str]] = typer.Option(None, "--backend-option", help="Backend option KEY=VALUE, e.g. kv_cache_gib=2 or max_retries=2."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Engine dtype for --backend vllm (default: from the CPU)."),
    temperature: float = typer.Option(0.8, "--temperature", help="Default sampling temperature (a request's temperature wins)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Default nucleus top-p (a request's top_p wins)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Default max tokens per sample (a request's max_tokens wins)."),
    max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="Largest max_tokens a request may ask for (the KV cache is sized for it)."),
    concurrency: int = typer.Option(32, "--concurrency", help="Problems solved at once; more requests wait their turn."),
    max_samples: int = typer.Option(64, "--max-samples", help="Largest N per prompt a request may ask for, from any source (ttscale.n, X-TTS-Strategy best-of-n-N, a model prefix, budget_samples, the setting the policy chooses)."),
    max_steps: int = typer.Option(64, "--max-steps", help="Largest max_steps (or lookahead) a request may give a step-wise search."),
    max_choices: int = typer.Option(64, "--max-choices", help="Largest client n (choices returned)."),
    max_prompts: int = typer.Option(32, "--max-prompts", help="Most prompts in one /v1/completions request."),
    max_body_bytes: int = typer.Option(8 * 2**20, "--max-body-bytes", help="Largest request body in bytes; a larger one gets 413 before it is read."),
    api_key_env: str = typer.Option("TTSCALE_API_KEY", "--api-key-env", help="Environment variable that holds the API key; when it is set, requests without 'Authorization: Bearer KEY' get 401."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level: warning, info, debug."),
) -> None:
    """Serve an OpenAI-compatible API that runs a test-time strategy, or the allocation policy, per request.

    Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics.
    SIGTERM stops taking requests, finishes those in flight, and exits 0.
    """
    from ttscale.serve.app import serve  # FastAPI and uvicorn (the serve extra) load only to serve

    console = Console(stderr=True)
    backend_options = parse_options(backend_option, "--backend-option")
    if base_url is not None:
        if backend != "openai":
            raise ConfigError("--base-url is the upstream of --backend openai; add --backend openai, or drop --base-url")
        backend_options["base_url"] = base_url
    if dtype is not None:
        if backend != "vllm":
            raise ConfigError(f"--dtype sets the vllm engine's dtype; the {backend} backend has none to set")
        backend_options["dtype"] = dtype
    try:
        settings = ServeSettings(
            backend=backend, model=model, backend_options=backend_options, strategy=strategy,
            strategy_options={"n": n, **parse_options(strategy_option, "-S")}, verifier=verifier,
            verifier_options=parse_options(verifier_option, "-V"), policy=policy,
            sampling=SampleParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p),
            max_tokens_limit=max_tokens_limit, concurrency=concurrency, api_key_env=api_key_env, max_samples=max_samples,
            max_steps=max_steps, max_choices=max_choices, max_prompts=max_prompts, max_body_bytes=max_body_bytes,
        )
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, "serve")) from None
    if max_tokens > max_tokens_limit:
        raise ConfigError(f"--max-tokens {max_tokens} is above --max-tokens-limit {max_tokens_limit}; raise the limit")
    _check_default(settings)

    def announce(state) -> None:
        auth = f"API key from ${api_key_env}" if os.environ.get(api_key_env) else f"no API key (${api_key_env} is unset)"
        policy_note = f", policy {policy}" if state.policy is not None else ""
        console.print(f"ttscale serve: {state.model_name} on http://{host}:{port}/v1 ({backend} backend, default "
                      f"{strategy} n={n}{policy_note}; {auth}). Ctrl-C or SIGTERM stops it.", highlight=False, soft_wrap=True)

    if backend == "vllm":
        console.print("Starting the vLLM engine (about a minute on CPU)...", highlight=False)
    asyncio.run(serve(settings, host=host, port=port, log_level=log_level, announce=announce))


def _check_default(settings) -> None:
    """Refuse a default strategy, options or verifier that cannot run, before the engine starts."""
    strategy = registry.strategies.create(settings.strategy, "-S/--n", **settings.strategy_options)  # unknown: "did you mean"
    values = {**{key: getattr(strategy, key, None) for key in LIMITED}, "n": samples_per_problem(strategy)}
    for key, value in values.items():
        limit = getattr(settings, LIMITED[key])
        if isinstance(value, int) and value > limit:  # else every request that takes the default would get 400
            raise ConfigError(f"the default strategy's {key}={value} is above --{LIMITED[key].replace('_', '-')} {limit}; "
                              "lower it or raise the limit")
    if settings.strategy_options.get("selection") == ORACLE_RULE:
        raise ConfigError("selection 'oracle' needs gold answers, and served requests have none; use majority or first")
    if settings.verifier is not None:
        registry.verifiers.factory(settings.verifier)
    elif needs_verifier(strategy):
        raise ConfigError(f"the default strategy {settings.strategy!r} with {settings.strategy_options} needs a verifier; "
                          "pass --verifier llm-judge-prm")

