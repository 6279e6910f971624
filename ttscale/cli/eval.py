"""`ttscale eval`: run a strategy on a benchmark and print accuracy, pass@k and compute."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ttscale import lifecycle, registry
from ttscale.analysis.runs import rule_uses_gold
from ttscale.cli.common import ENGINE_LOG, Column, Format, Output, RunInterrupted, errors, parse_options
from ttscale.config import RunConfig, load_config_file
from ttscale.errors import ConfigError
from ttscale.problems import Split
from ttscale.quiet import output_to_log
from ttscale.runner import run_eval
from ttscale.scaleout import connect, require_ray


def eval_command(
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Benchmark: arithmetic, gsm-symbolic, champ, humaneval (offline); gsm8k, math500, aime24, mbpp (hub, or --data-file); or a .jsonl file with question/answer fields.", rich_help_panel="Benchmark"),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy name, e.g. best-of-n.", rich_help_panel="Strategy"),
    n: Optional[int] = typer.Option(None, "--n", help="N: samples per problem (the strategy's budget). Must be >= 1.", rich_help_panel="Strategy"),
    selection: Optional[str] = typer.Option(None, "--selection", help="Best-of-N selection rule reported as the accuracy: majority, first or oracle (all three are always recorded); with a verifier or a scorer also max-score, weighted-vote or borda-vote.", rich_help_panel="Strategy"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first LIMIT problems.", rich_help_panel="Benchmark"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Embedded model name (smollm2-135m), a local HF directory, or a hub id.", rich_help_panel="Backend"),
    backend: Optional[str] = typer.Option(None, "--backend", help="Backend: vllm (in-process engine), openai (any OpenAI-compatible server), replay (a recorded best-of-N run's samples again: --backend-option run=RUN_DIR) or fake (for tests).", rich_help_panel="Backend"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Server URL for --backend openai, e.g. http://127.0.0.1:8000/v1.", rich_help_panel="Backend"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed; per-request seeds derive from it and each problem id.", rich_help_panel="Sampling"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Directory that holds run directories (default: runs).", rich_help_panel="Run and output"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (default: 0.8).", rich_help_panel="Sampling"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling top-p (default: 1.0).", rich_help_panel="Sampling"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Maximum generated tokens per sample (default: 256).", rich_help_panel="Sampling"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Problems in flight at once (default: 16).", rich_help_panel="Backend"),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="Local copy of a hub benchmark's data (JSON/JSONL/Parquet in the dataset's schema); same as -B data_file=PATH.", rich_help_panel="Benchmark"),
    benchmark_option: Optional[list[str]] = typer.Option(None, "--benchmark-option", "-B", help="Benchmark option KEY=VALUE, e.g. -B terms=3 -B digits=2, or -B question_field=problem.", rich_help_panel="Benchmark"),
    strategy_option: Optional[list[str]] = typer.Option(None, "--strategy-option", "-S", help="Strategy option KEY=VALUE.", rich_help_panel="Strategy"),
    backend_option: Optional[list[str]] = typer.Option(None, "--backend-option", help="Backend option KEY=VALUE, e.g. gpu_memory_utilization=0.3.", rich_help_panel="Backend"),
    verifier: Optional[str] = typer.Option(None, "--verifier", "-v", help="Verifier that scores solutions: llm-judge-prm (a judge model's P(Yes) per step; runs on CPU), vllm-prm (a PRM served by vLLM's pooling API; GPU), oracle-orm (final-answer correctness from gold answers: an upper bound), trained (a head trained from your runs: -V path=DIR from `ttscale verifier train`).", rich_help_panel="Verifier"),
    verifier_option: Optional[list[str]] = typer.Option(None, "--verifier-option", "-V", help="Verifier option KEY=VALUE, e.g. -V aggregation=min.", rich_help_panel="Verifier"),
    beam_width: Optional[str] = typer.Option(None, "--beam-width", help="Beam search / DVTS beam width M (a number, or sqrt for M = sqrt(N)): each step keeps N/M beams (subtrees) and expands each into M children.", rich_help_panel="Strategy"),
    lookahead: Optional[int] = typer.Option(None, "--lookahead", help="Beam search lookahead k: greedy steps rolled out only to score a beam (0 = none).", rich_help_panel="Strategy"),
    aggregation: Optional[str] = typer.Option(None, "--aggregation", help="How step scores become one score: last, min, prod or mean (defaults: last for beam search/DVTS, prod for particle filtering).", rich_help_panel="Strategy"),
    ratio: Optional[str] = typer.Option(None, "--ratio", help="Revision: sequential:parallel split of N, e.g. 4:2 = 2 chains of 4 attempts.", rich_help_panel="Strategy"),
    speculative: Optional[str] = typer.Option(None, "--speculative", help="Speculative decoding on the vllm backend: 'ngram' (prompt lookup, no draft model) or a draft model (embedded name, HF directory or hub id).", rich_help_panel="Backend"),
    num_speculative_tokens: Optional[int] = typer.Option(None, "--num-speculative-tokens", help="Draft length: tokens proposed per speculative step (default 4).", rich_help_panel="Backend"),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of RunConfig fields; flags given on the command line override it.", rich_help_panel="Run and output"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Engine dtype (float32, bfloat16, float16); default: from the CPU (bfloat16 with AVX512-BF16 or AMX, else float32), vLLM's choice on a GPU. Same as --backend-option dtype=...", rich_help_panel="Backend"),
    verbose: bool = typer.Option(False, "--verbose", help="Show the engine's and the libraries' output here instead of in the run directory's engine.log.", rich_help_panel="Run and output"),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'local' starts a Ray cluster on this machine, HOST:PORT joins one (ray start --head), giving up after $TTSCALE_RAY_TIMEOUT_S seconds (default 30). Needs pip install 'ttscale[ray]'.", rich_help_panel="Scale-out"),
    replicas: Optional[int] = typer.Option(None, "--replicas", help="With --ray: engine replicas (Ray actors), each with its own backend and --concurrency problems in flight.", rich_help_panel="Scale-out"),
    replica_gpus: Optional[float] = typer.Option(None, "--replica-gpus", help="With --ray: GPUs per replica (default: 1 where the cluster has GPUs, else 0).", rich_help_panel="Scale-out"),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/K: run only shard I of K (problems whose sha256(id) mod K is I), into a run directory of its own; join the K shards with `ttscale merge`.", rich_help_panel="Scale-out"),
    split: Optional[Split] = typer.Option(None, "--split", help="Evaluate only one half of the problems: a (where policies and verifiers are fitted) or b (held out), by a stable hash of each problem id; all: every problem (overrides a config file's split).", rich_help_panel="Benchmark"),
    format: Format = typer.Option(Format.table, "--format", help="The summary as table (fits the terminal), json, csv or markdown; with the last three the progress goes to stderr.", rich_help_panel="Run and output"),
) -> None:
    """Evaluate a strategy on a benchmark and print accuracy, pass@k and compute.

    Rerunning the same command resumes: finished problems are skipped.
    """
    flags = {name: value for name, value in locals().items() if name not in ("config_file", "verbose", "format")}  # the rest map to the config
    file_values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    if benchmark is None and "benchmark" not in file_values:
        raise ConfigError(f"no benchmark given; pass --benchmark NAME ({', '.join(registry.benchmarks.names())}) or a .jsonl file")
    flags.update(strategy_options=parse_options(strategy_option, "-S"), verifier_options=parse_options(verifier_option, "-V"),
                 benchmark_options=parse_options(benchmark_option, "-B"), backend_options=parse_options(backend_option, "--backend-option"))
    config = RunConfig.from_flags(flags, file_values, where=str(config_file) if config_file else "eval")
    check_names(config)
    output = Output(format)
    if config.ray is not None:

        # Before the run directory exists: a missing Ray, or a cluster that cannot be joined, is one
        # line. A local cluster starts with the run instead, so its processes' output goes to engine.log.
        if config.ray == "local":
            require_ray()
        else:
            connect(config)
        output.console.print(f"Scale-out: {config.replicas} replica(s) on Ray ({config.ray}), {config.concurrency} problems in flight each.")
    try:
        result = lifecycle.run(_eval_with_progress(config, output.console, verbose=verbose))
    except (KeyboardInterrupt, lifecycle.Terminated) as stop:
        how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        raise RunInterrupted(
            f"{how}: finished problems are saved in {config.output / config.run_id()}; "
            "rerun the same command to resume",
            exit_code=lifecycle.INTERRUPTED_EXIT if how == "interrupted" else lifecycle.TERMINATED_EXIT,
        ) from None
    print_summary(result.summary, result, config, output)
    output.finish()


def check_names(config: RunConfig) -> None:
    """Refuse an unknown backend before the run directory exists (the runner builds it later)."""
    if config.backend not in registry.backends:
        registry.backends.factory(config.backend)  # raises, with "did you mean"


async def _eval_with_progress(config: RunConfig, console: Console, *, verbose: bool = False):
    """Run the eval with a progress bar and its messages on `console` (stderr when stdout is for a program)."""

    generated = {"tokens": 0}
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task(config.run_id(), total=None, rate="")

    def on_start(total: int, done: int) -> None:
        progress.update(task, total=total, completed=done)
        if config.split is not None:
            among = f"the first {config.limit}" if config.limit is not None else "all the"
            part = f" (shard {config.shard})" if config.shard is not None else ""
            console.print(f"Split {config.split}{' (held out)' if config.split == 'b' else ''}: "
                          f"{total} problems of that half among {among} problems{part}.")
        elif config.shard is None and config.limit is not None and total < config.limit:
            console.print(f"Note: --limit {config.limit}, but {config.benchmark} has only {total} problems; running all {total}.")
        if done:
            console.print(f"Resuming: {done} of {total} problems already finished in this run.")
        if done < total:
            wait = " (the vLLM engine takes about a minute to start on CPU)" if config.backend == "vllm" else ""
            console.print(f"Starting the {config.backend} backend for {config.model}{wait}...")
            if not verbose:  # the run directory exists now: the engine's output goes there
                quiet.enter_context(output_to_log(engine_log, console, errors))
                logged.append(engine_log)

    def on_record(record: dict[str, Any]) -> None:
        generated["tokens"] += record["cost"]["generated_tokens"]
        elapsed = progress.tasks[0].elapsed or 1e-9
        progress.update(task, advance=1, rate=f"{generated['tokens'] / elapsed:.1f} tok/s")

    engine_log = config.output / config.run_id() / ENGINE_LOG
    quiet = ExitStack()
    logged: list[Path] = []  # the log this invocation wrote (not one left by an earlier run)
    try:
        with progress, quiet:
            return await run_eval(config, on_start=on_start, on_record=on_record)
    except BaseException:
        if logged and engine_log.is_file():
            errors.print(f"The engine's and libraries' output is in {engine_log} (--verbose shows it here)", highlight=False, soft_wrap=True)
        raise


def print_summary(summary: dict[str, Any], result: Any, config: RunConfig, output: Output) -> None:
    """The end-of-run table: accuracy per rule, pass@k per k, tokens, FLOPs and time."""

    half = f" · split {config.split}{' (held out)' if config.split == 'b' else ''}" if config.split else ""
    rows = []
    for rule, value in summary["accuracy"].items():
        marker = " (chosen)" if rule == summary["chosen_rule"] else ""
        guided = rule_uses_gold(rule, strategy=config.strategy, verifier_uses_gold=summary.get("verifier_uses_gold", False))
        gold = " (upper bound: uses gold)" if guided else ""
        rows.append([f"accuracy · {rule}{marker}{gold}", f"{value:.3f}"])
    for k, value in summary["pass_at_k"].items():
        rows.append([f"pass@{k}", f"{value:.3f}"])
    cost = summary["cost"]
    # Calls whose tokens nobody could count (an HTTP server without token ids or usage), or whose
    # FLOPs nobody could price (a model of unknown size): never a silent 0.
    unknown = f"unknown ({cost['uncounted_calls']:,} calls uncounted)" if cost.get("uncounted_calls") else None
    unpriced = unknown or ("unknown (model size unknown: --backend-option num_params=N)" if cost.get("unpriced_calls") else None)
    rows.append(["samples", f"{summary['samples']}"])
    rows.append(["prompt tokens (cached)", unknown or f"{cost['prompt_tokens']:,} ({cost['cached_prompt_tokens']:,})"])
    rows.append(["generated tokens", unknown or f"{cost['generated_tokens']:,}"])
    if config.verifier:
        oracle = " (oracle: uses gold answers, an upper bound)" if summary.get("verifier_uses_gold") else ""
        rows.append([f"verifier {config.verifier}{oracle}: calls, tokens", f"{cost['verifier_calls']:,}, {cost['verifier_tokens']:,}"])
        rows.append(["verifier FLOPs (included in FLOPs)", unpriced or f"{cost['verifier_flops']:.3e}"])
    rows.append(["FLOPs", unpriced or f"{cost['flops']:.3e}"])
    rows.append(["eFLOPs (Kinetics: compute + I x memory traffic)", unpriced or f"{cost['eflops']:.3e}"])
    rows.append(["generation time, summed over problems", f"{cost['wall_s']:.1f} s"])
    rows.append(["wall time, this invocation", f"{result.elapsed_s:.1f} s"])
    engine = engine_settings_of_run(result.run_dir)
    if engine.get("dtype_reason"):
        rows.append(["engine dtype", engine["dtype_reason"]])
    output.table(f"{config.benchmark} · {config.strategy} · {config.model} · {summary['problems']} problems{half}",
                 [Column("metric"), Column("value", "right")], rows)
    print_optional_sections(summary, output)
    output.note(f"Run directory: {result.run_dir}  (resumed {result.resumed}, solved now {result.solved_now})")


def engine_settings_of_run(run_dir: Path) -> dict[str, Any]:
    """The engine settings backend.json recorded ({} when the run has none, e.g. all resumed)."""
    try:
        return json.loads((Path(run_dir) / "backend.json").read_text()).get("engine_settings") or {}
    except (OSError, ValueError):
        return {}


def print_optional_sections(summary: dict[str, Any], output: Output) -> None:
    """Revision runs: accuracy and cost per depth, and answer flips; speculative runs: acceptance."""
    revision = summary.get("revision")
    if revision:
        output.table("revision · per depth (depth 1 = first attempt)",
                     [Column(name, "right") for name in ("depth", "attempts", "accuracy", "prompt tok (cached)", "generated tok", "FLOPs")],
                     [[str(row["depth"]), str(row["attempts"]), f"{row['accuracy']:.3f}",
                       f"{row.get('prompt_tokens', 0):,} ({row.get('cached_prompt_tokens', 0):,})",
                       f"{row.get('generated_tokens', 0):,}", "unknown" if row.get("flops", 0) is None else f"{row.get('flops', 0):.3e}"]
                      for row in revision["depths"]])
        flips = revision["flips"]
        rate = lambda value: "n/a" if value is None else f"{value:.1%}"  # noqa: E731
        output.note(
            f"Revisions that turned a correct attempt incorrect: {rate(flips['correct_to_incorrect'])} "
            f"of {flips['pairs_from_correct']}; incorrect to correct: {rate(flips['incorrect_to_correct'])} "
            f"of {flips['pairs_from_incorrect']}"
        )
    execution = summary.get("execution")
    if execution:  # code rules' sandbox runs: a cost beside FLOPs, not in them
        output.note(
            f"Execution (sandboxed runs: visible tests or programs): {execution['runs']:,} runs, {execution['cpu_s']:.1f} CPU s, "
            f"{execution['wall_s']:.1f} wall s over {execution['problems']} problems "
            f"({execution['cpu_s_per_problem']:.2f} CPU s per problem)"
        )
    spec = summary.get("speculative")
    if spec:
        output.note(
            f"Speculative decoding: {spec['drafted_tokens']:,} drafted, {spec['accepted_tokens']:,} accepted, "
            f"{spec['emitted_tokens']:,} emitted tokens; acceptance rate {spec['acceptance_rate']:.3f}, "
            f"mean acceptance length {spec['mean_acceptance_length']:.2f}; draft FLOPs "
            + ("unknown" if spec["draft_flops"] is None else f"{spec['draft_flops']:.3e}")
        )
