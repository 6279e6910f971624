"""Scale-out: engine replicas as Ray actors, shards by a stable hash of the problem id, and merge.

Ray (`--ray local|ADDRESS --replicas K`): each replica is an async Ray actor that builds the run's
backend, strategy, verifier and benchmark from the RunConfig and solves whole problems, so every
step of one problem runs on one replica and its prefix cache serves the search. The driver
assigns problems to replicas (each replica has `concurrency` slots that take the next problem) and
is the only writer of samples.jsonl, so resume, the lock and the torn-line rules are the store's.

Faults: a replica whose worker dies is restarted by Ray (`max_restarts`). Its unfinished problems
go back on the driver's queue and a live replica takes them: the dead one's solve calls are not
retried by Ray (`max_task_retries=0`), so a problem never waits for an engine to restart. A
problem is recorded once, when a replica returns its record.

Without Ray (`--shard I/K`): a run takes the problems whose sha256(id) mod K is I (ttscale.problems),
into a run directory of its own; `merge` joins the K shard runs into the run one process would have written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ttscale.analysis.summary import summarize
from ttscale.build import build_backend, build_benchmark, build_strategy, build_verifier, describe_backend
from ttscale.config import NOT_HASHED, RunConfig, build_config
from ttscale.errors import ConfigError, TtscaleError
from ttscale.machine import environment
from ttscale.problems import shard_index, split_of
from ttscale.protocols import samples_per_problem, size_for_workload
from ttscale.record import solve_and_record
from ttscale.store import SAMPLES, RunStore, read_samples
from ttscale.types import Problem

RAY_INSTALL = "pip install 'ttscale[ray]'"
REPLICA_MAX_RESTARTS = 3  # per replica: a worker that keeps dying is a fault to report, not to hide
MAX_ATTEMPTS = 3  # per problem: one that was in flight on 3 dying replicas likely kills them
REPLICA_CPUS = 1.0  # what a replica reserves for scheduling: its engine's driver thread and tokenizer
LOCAL_OBJECT_STORE = 256 * 2**20  # records are kilobytes; Ray's default takes 30% of RAM
log = logging.getLogger(__name__)


# --- where a backend runs ----------------------------------------------------------------------


def local_placement() -> dict[str, Any]:
    """Where this process runs: host, pid and devices (the GPUs it may see, or the CPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [f"cuda:{d}" for d in visible.split(",") if d.strip()] if visible else _default_devices()
    return {"host": socket.gethostname(), "pid": os.getpid(), "devices": devices}


def _default_devices() -> list[str]:
    try:
        import torch  # present wherever vllm is; the fake backend runs without it

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # no torch, or a broken CUDA setup: the CPU is what runs
        pass
    return ["cpu"]


# --- Ray ---------------------------------------------------------------------------------------


def require_ray():
    """The ray module, or a one-line ConfigError that says how to install it."""
    try:
        import ray  # Ray: the optional extra, only with --ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed here: {RAY_INSTALL}") from None
    return ray


class Replica:
    """One engine replica: the run's backend, strategy, verifier and benchmark, built from the config
    inside the Ray actor (so any registered backend works), solving whole problems."""

    def __init__(self, config_json: str, index: int):
        self.index = index
        self.error: str | None = None
        self.config = RunConfig.model_validate_json(config_json)
        try:
            self.benchmark = build_benchmark(self.config)
            self.strategy = build_strategy(self.config)
            self.verifier = build_verifier(self.config, self.benchmark)
            self.backend = build_backend(self.config)
        except TtscaleError as error:  # reported by the driver as one line
            self.error = str(error)
            return
        # Sized from what this replica holds: its problems in flight x samples each.
        sequences = self.config.concurrency * samples_per_problem(self.strategy)
        size_for_workload(self.backend, sequences=sequences, max_tokens=self.config.sampling.max_tokens)

    async def placement(self) -> dict[str, Any]:
        """Where this replica runs (host, node, pid, devices), or the error that stopped its build."""
        import ray  # Ray: the optional extra, only with --ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU") or []
        here = local_placement()
        if gpus:
            here["devices"] = [f"cuda:{g}" for g in gpus]
        return {"replica": self.index, **here, "node_id": context.get_node_id(),
                "ip": ray.util.get_node_ip_address(), "error": self.error}

    async def solve(self, problem: Problem) -> dict[str, Any]:
        """Solve, grade and record one problem (the driver writes the record)."""
        if self.error is not None:
            raise TtscaleError(self.error)
        return await solve_and_record(
            problem, strategy=self.strategy, backend=self.backend, benchmark=self.benchmark,
            config=self.config, verifier=self.verifier,
        )

    async def describe(self) -> dict[str, Any]:
        """What served the run on this replica (the runner's backend description) and where."""
        return {**describe_backend(self.backend), **(await self.placement())}

    async def close(self) -> None:
        """Release the verifier and the engine."""
        if self.error is None:
            if self.verifier is not None:
                await self.verifier.close()
            await self.backend.close()


def portable_config(config: RunConfig) -> RunConfig:
    """The config a replica builds from: local file paths made absolute, since a Ray worker's
    working directory is not the driver's (on other nodes, the paths must exist there too)."""
    updates: dict[str, Any] = {}
    if Path(config.benchmark).is_file():
        updates["benchmark"] = str(Path(config.benchmark).resolve())
    data_file = config.benchmark_options.get("data_file")
    if isinstance(data_file, str) and Path(data_file).exists():
        updates["benchmark_options"] = {**config.benchmark_options, "data_file": str(Path(data_file).resolve())}
    return config.model_copy(update=updates)


RAY_TIMEOUT_ENV = "TTSCALE_RAY_TIMEOUT_S"  # how long joining a cluster may take, in seconds
RAY_TIMEOUT_S = 30.0


def ray_timeout_s() -> float:
    """Seconds that joining a Ray cluster may take: $TTSCALE_RAY_TIMEOUT_S, else 30."""
    raw = os.environ.get(RAY_TIMEOUT_ENV)
    if raw is None:
        return RAY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"{RAY_TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0, e.g. {RAY_TIMEOUT_ENV}=60")
    return value


def ray_address(value: str) -> tuple[str, int]:
    """The host and port of --ray HOST:PORT or ray://HOST:PORT ([v6 address]:PORT too)."""
    rest = value.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--ray {value!r}: expected local, HOST:PORT or ray://HOST:PORT, e.g. --ray 127.0.0.1:6379")
    return host, int(port)


def connect(config: RunConfig):
    """Start (`local`) or join (HOST:PORT, ray://...) a Ray cluster; returns the ray module.

    Joining takes at most $TTSCALE_RAY_TIMEOUT_S (30 s): the address must take a TCP connection,
    then Ray's own connection timeouts are set to that budget. Connected already: returns at once
    (the CLI connects before it creates the run directory, the runner again later)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    settings: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    if config.ray == "local":
        cpus = max(os.cpu_count() or 1, int(config.replicas * REPLICA_CPUS + 0.999))
        settings.update(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE)
        ray.init(**settings)
        return ray
    settings["address"] = config.ray
    del settings["include_dashboard"]  # a setting of the cluster, not of a driver joining it
    timeout = ray_timeout_s()
    _reachable(ray, config.ray, timeout)
    try:
        _join(ray, settings, timeout)
    except ConnectionError as error:
        if not _needs_token(error):
            raise _cannot_join(config.ray, error, timeout) from None
        # Ray >= 2.5x: `ray start` turns token authentication on where a token exists (any local
        # ray.init() writes ~/.ray/auth_token), but a driver given an address does not: it must be
        # told, with RAY_AUTH_MODE=token (Ray's documented switch), and then reads the same token.
        if os.environ.get("RAY_AUTH_MODE") or not _token_available():
            raise TtscaleError(
                f"the Ray cluster at {config.ray} wants its authentication token: export RAY_AUTH_MODE=token "
                "and RAY_AUTH_TOKEN (or copy the head's ~/.ray/auth_token here), then rerun"
            ) from None
        os.environ["RAY_AUTH_MODE"] = "token"
        log.warning("the Ray cluster at %s uses token authentication: joining with this machine's token", config.ray)
        try:
            _join(ray, settings, timeout)
        except ConnectionError as error:
            raise _cannot_join(config.ray, error, timeout) from None
    return ray


def _reachable(ray, address: str, timeout: float) -> None:
    """Refuse an address that takes no TCP connection within `timeout` (where Ray would retry for minutes)."""
    host, port = ray_address(address)
    if not address.startswith("ray://"):
        from ray._private.services import resolve_ip_for_localhost  # Ray: the optional extra, only with --ray

        host = resolve_ip_for_localhost(host)  # where Ray itself will connect: 127.0.0.1 becomes this node's IP
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        why = "no answer within {:g} s".format(timeout) if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise TtscaleError(
            f"cannot reach the Ray cluster at {address} ({why}); start it with `ray start --head` there, "
            f"or pass --ray local (a slow network: export {RAY_TIMEOUT_ENV}=SECONDS)"
        ) from None


def _join(ray, settings: dict[str, Any], timeout: float) -> None:
    """ray.init that gives up after about `timeout` seconds. What Ray logs while it tries (glog
    warnings from C++, on fd 2) becomes the ConnectionError's message instead of terminal noise."""
    with _connect_timeouts(timeout), tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        terminal = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            ray.init(**settings)
        except ConnectionError as error:
            said = _last_ray_line(captured)
            raise ConnectionError(f"{error}{'; ' + said if said else ''}") from error.__cause__
        finally:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
        captured.seek(0)
        sys.stderr.write(captured.read().decode("utf-8", "replace"))  # joined: what Ray said is shown


@contextmanager
def _connect_timeouts(timeout: float) -> Iterator[None]:
    """Ray's connection knobs (environment variables) set so one attempt to reach a GCS takes
    about `timeout` seconds: connect, subscribe, wait for the cluster id, and no retry. Unset, a
    driver retries for 20 x ~40 s while the bar sits at 0. The user's own settings win."""
    budget = max(1, int(timeout))
    knobs = {
        "RAY_gcs_rpc_server_connect_timeout_s": str(max(1, budget // 4)),
        "RAY_py_gcs_connect_timeout_s": str(max(1, budget // 2)),
        "RAY_gcs_server_port_wait_time_s": "1",  # attempts at ~1 s each after the first
    }
    with environment({name: os.environ.get(name, value) for name, value in knobs.items()}):
        _reread_ray_config()
        yield


def _reread_ray_config() -> None:
    """Ray reads its RAY_* variables into its config once; read them again, as Ray's own token setup does."""
    try:
        from ray._raylet import Config  # Ray: the optional extra, only with --ray

        Config.initialize("")
    except (ImportError, AttributeError):  # another Ray: its defaults apply
        pass


def _last_ray_line(captured) -> str:
    """The message of the last line Ray logged, without its glog prefix."""
    captured.seek(0)
    lines = [line.strip() for line in captured.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].split("] ", 1)[-1] if lines else ""


def _cannot_join(address: str, error: BaseException, timeout: float) -> TtscaleError:
    return TtscaleError(
        f"cannot join the Ray cluster at {address} within {timeout:g} s ({' '.join(str(error).split())[:300]}); "
        f"start it with `ray start --head` there, or pass --ray local (a slow network: export {RAY_TIMEOUT_ENV}=SECONDS)"
    )


def _needs_token(error: BaseException) -> bool:
    """Whether a failed ray.init was refused for want of Ray's authentication token."""
    cause = error.__cause__
    return type(cause).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(cause or "")


def _token_available() -> bool:
    """A Ray authentication token this driver can send (the places Ray itself reads)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def replica_resources(ray, config: RunConfig) -> dict[str, float]:
    """CPUs and GPUs each replica reserves; refuses a request the cluster cannot place (Ray would wait forever)."""
    total = ray.cluster_resources()
    gpus = config.replica_gpus if config.replica_gpus is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    wanted = {"CPU": config.replicas * REPLICA_CPUS, "GPU": config.replicas * gpus}
    short = [f"{need:g} {kind}s (the cluster has {total.get(kind, 0):g})" for kind, need in wanted.items()
             if need > total.get(kind, 0) + 1e-9]
    if short:
        raise ConfigError(
            f"{config.replicas} replicas need " + " and ".join(short)
            + "; pass fewer --replicas, a smaller --replica-gpus, or add nodes to the cluster"
        )
    return {"num_cpus": REPLICA_CPUS, "num_gpus": gpus}


@dataclass
class _Drain:
    """The driver's bookkeeping while replicas work through the queue."""

    remaining: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    attempts: Counter = field(default_factory=Counter)
    recorded: set[str] = field(default_factory=set)
    requeued: Counter = field(default_factory=Counter)  # per replica: problems a dying worker had in flight
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def solve_on_ray(
    todo: Sequence[Problem],
    config: RunConfig,
    *,
    append: Callable[[dict[str, Any]], None],
    on_placed: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Solve `todo` on `config.replicas` Ray actors; `append(record)` is called in the driver as each
    problem finishes. Returns backend.json's content: the replicas, their hosts and devices.
    `on_placed(info)` gets the same shape once every replica is up (the runner writes it early, so
    a user, or a test, sees where the replicas run while they work)."""
    ray = connect(config)
    actors: list[Any] = []
    try:
        resources = replica_resources(ray, config)
        remote = ray.remote(Replica).options(
            **resources,
            max_restarts=REPLICA_MAX_RESTARTS,
            max_concurrency=config.concurrency + 4,  # slots for problems, plus placement/describe calls
            scheduling_strategy="SPREAD",  # one replica per node while nodes last
        )
        config_json = portable_config(config).model_dump_json()
        actors = [remote.remote(config_json, index) for index in range(config.replicas)]
        placed = await _placements(actors)
        for info in placed:
            if info["error"]:
                raise TtscaleError(f"replica {info['replica']} on {info['host']}: {info['error']}")
        if on_placed:
            on_placed(_backend_info(config, resources, placed, Counter()))
        state = _Drain(remaining=len(todo))
        for problem in todo:
            state.queue.put_nowait(problem)
        slots = [
            _slot(ray, actor, index, state, append, config)
            for index, actor in enumerate(actors) for _ in range(config.concurrency)
        ]
        await gather_or_cancel(slots)
        if state.remaining:
            raise TtscaleError(
                f"every replica died for good ({REPLICA_MAX_RESTARTS} restarts each) with {state.remaining} problems "
                "left; finished problems are saved: see the run directory's engine.log, then rerun to resume"
            )
        described = await asyncio.gather(*(_describe(actor) for actor in actors), return_exceptions=True)
        members = [
            {**d, "restarted": d["pid"] != p["pid"]} if isinstance(d, dict)
            else {**p, "error": f"no description ({type(d).__name__})"}
            for d, p in zip(described, placed)
        ]
        return _backend_info(config, resources, members, state.requeued)
    finally:
        await _release(ray, actors)


async def _placements(actors: list[Any]) -> list[dict[str, Any]]:
    """Each replica's placement, once its constructor has run; a constructor that crashed is one line."""
    from ray.exceptions import RayActorError  # Ray: the optional extra, only with --ray

    try:
        return list(await asyncio.gather(*(actor.placement.remote() for actor in actors)))
    except RayActorError as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise TtscaleError(f"a replica failed to start ({first[:300]}); see the run directory's engine.log") from None


async def _slot(ray, actor, index: int, state: _Drain, append, config: RunConfig) -> None:
    """One of a replica's `concurrency` places: take the next problem, have the replica solve it, record it."""
    from ray.exceptions import ActorDiedError, RayActorError, RayTaskError  # Ray: the optional extra, only with --ray

    while True:
        problem = await state.queue.get()
        if problem is None:
            return
        try:
            record = await actor.solve.options(max_task_retries=0).remote(problem)
        except RayTaskError as error:  # the problem itself failed (a strategy or backend error): as in one process
            cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error
            raise cause from None
        except RayActorError:  # the replica's worker died: a live replica takes the problem
            state.attempts[problem.id] += 1
            if state.attempts[problem.id] >= MAX_ATTEMPTS:
                raise TtscaleError(
                    f"problem {problem.id} was in flight on {MAX_ATTEMPTS} replicas that died; it may be what "
                    "kills them (memory?): see the run directory's engine.log; finished problems are saved"
                ) from None
            state.requeued[index] += 1
            state.queue.put_nowait(problem)
            log.warning("replica %d died with problem %s in flight; a live replica takes it", index, problem.id)
            restarted = asyncio.ensure_future(_until_alive(actor))
            finished = asyncio.ensure_future(state.done.wait())  # the others may finish the run first
            await asyncio.wait([restarted, finished], return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            if not restarted.done():
                restarted.cancel()
                return
            if isinstance(restarted.exception(), ActorDiedError):
                return  # restarts used up: this replica's places close, the others finish the run
            restarted.result()
            continue
        if problem.id not in state.recorded:  # exactly once, whatever the replicas did
            state.recorded.add(problem.id)
            append(record)
            state.remaining -= 1
        if state.remaining == 0 and not state.done.is_set():
            state.done.set()
            for _ in range(config.replicas * config.concurrency):
                state.queue.put_nowait(None)  # every place stops


async def _until_alive(actor) -> None:
    """Wait while Ray restarts a replica (its constructor runs again); ActorDiedError if it never will."""
    from ray.exceptions import ActorUnavailableError  # Ray: the optional extra, only with --ray

    while True:
        try:
            await actor.placement.remote()
            return
        except ActorUnavailableError:  # restarting: try again shortly
            await asyncio.sleep(1.0)


async def _describe(actor, patience_s: float = 120.0) -> dict[str, Any]:
    """A replica's description for backend.json, waiting a while for one that Ray is restarting."""
    from ray.exceptions import ActorUnavailableError  # Ray: the optional extra, only with --ray

    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            return await actor.describe.remote()
        except ActorUnavailableError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1.0)


async def gather_or_cancel(coroutines: Iterable) -> None:
    """Run the coroutines together; on the first failure (or cancellation) cancel the rest and
    wait for them, so nothing keeps running behind the error. Whatever finished is on disk."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _release(ray, actors: list[Any]) -> None:
    """Close each replica's engine, then end the actors and disconnect (a local cluster stops)."""
    if actors:
        closing = [actor.close.remote() for actor in actors]
        try:
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), timeout=60)
        except asyncio.TimeoutError:
            log.warning("replicas took over 60 s to close; ending them")
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
    if ray.is_initialized():
        ray.shutdown()


def _backend_info(config: RunConfig, resources: dict[str, float], members: list[dict[str, Any]],
                  requeued: Counter) -> dict[str, Any]:
    """backend.json of a Ray run: the first replica's backend description (model, engine settings),
    then the replicas, their hosts and devices, and each replica's own description."""
    first = next((m for m in members if "backend" in m), {})
    head = {key: first[key] for key in ("backend", "model", "num_params", "shape", "engine_settings") if key in first}
    return {
        **head,
        "replicas": config.replicas,
        "hosts": sorted({m["host"] for m in members}),
        "devices": [{"replica": m["replica"], "host": m["host"], "devices": m["devices"]} for m in members],
        "ray": {"address": config.ray, "replica_cpus": resources["num_cpus"], "replica_gpus": resources["num_gpus"],
                # Problems that went back to the queue because the replica's worker died under them.
                "requeued": {str(k): v for k, v in sorted(requeued.items())}},
        "members": members,
    }


# --- merge -------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    """What `merge` wrote: the run directory, its summary, and the shards it did not get."""

    run_dir: Path
    summary: dict[str, Any]
    shards: list[str]
    missing: list[str]


def _read_shard(run_dir: Path) -> tuple[RunConfig, list[dict[str, Any]]]:
    config_path = run_dir / "config.json"
    if not config_path.is_file() or not (run_dir / SAMPLES).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (needs config.json and {SAMPLES}); pass runs/<id> as `ttscale eval --shard` wrote it")
    try:
        raw = json.loads(config_path.read_text())
    except ValueError as error:
        raise ConfigError(f"{config_path}: not JSON ({error}); pass a run directory `ttscale eval` wrote") from None
    config = build_config(raw, where=str(config_path))
    if config.shard is None:
        raise ConfigError(f"{run_dir} is not a shard (its config has no shard); merge runs made with `ttscale eval --shard I/K`")
    records: dict[str, dict[str, Any]] = {}
    for record in read_samples(run_dir / SAMPLES):
        records.setdefault(record["problem_id"], record)
    return config, list(records.values())


def _differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Fields (other than the shard and where/how-fast fields) on which two configs differ."""
    skip = NOT_HASHED | {"shard"}
    left, right = a.model_dump(mode="json", exclude=skip), b.model_dump(mode="json", exclude=skip)
    return sorted(name for name in left if left[name] != right.get(name))


def merge_runs(run_dirs: Sequence[Path], output: Path) -> MergeResult:
    """Join shard runs of one config into the run one process would have written, under `output`.

    Refuses shards of different configs (a --split included), of different shard counts, the same
    shard twice, records outside their shard or split, problems in two shards, and a target run that
    already has records.
    """
    if not run_dirs:
        raise ConfigError("no run directories given; pass the shard runs, e.g. ttscale merge runs/*-shard*of4-* -o runs")
    shards = [(Path(d), *_read_shard(Path(d))) for d in run_dirs]
    first_dir, first, _ = shards[0]
    by_index: dict[int, Path] = {}
    owner: dict[str, Path] = {}
    for run_dir, config, records in shards:
        differ = _differences(first, config)
        if differ:
            raise ConfigError(f"{run_dir} and {first_dir} are shards of different runs (they differ in {', '.join(differ)}); merge shards of one config")
        index, count = config.shard_of()
        if count != first.shard_of()[1]:
            raise ConfigError(f"{run_dir} is shard {config.shard} but {first_dir} is shard {first.shard}: merge the shards of one split")
        if index in by_index:
            raise ConfigError(f"shard {config.shard} given twice: {by_index[index]} and {run_dir}")
        by_index[index] = run_dir
        for record in records:
            pid = record["problem_id"]
            if shard_index(pid, count) != index:
                raise ConfigError(f"{run_dir}: problem {pid!r} does not belong to shard {config.shard}; was this run directory edited?")
            if config.split is not None and split_of(pid) != config.split:
                raise ConfigError(f"{run_dir}: problem {pid!r} does not belong to split {config.split}; was this run directory edited?")
            if pid in owner:
                raise ConfigError(f"problem {pid!r} is in both {owner[pid]} and {run_dir}; merge shards whose problems do not overlap")
            owner[pid] = run_dir
    count = first.shard_of()[1]
    merged = first.model_copy(update={"shard": None, "output": Path(output), "ray": None, "replicas": 1, "replica_gpus": None})
    with RunStore(merged) as store:
        existing = store.records()
        if existing:
            raise ConfigError(f"{store.dir} already has {len(existing)} problems; pass another -o (merge writes a new run)")
        for _, _, records in sorted(shards, key=lambda s: s[1].shard_of()[0]):
            for record in records:
                store.append(record)
        store.write_json("backend.json", _merged_backend_info(shards))
        records = store.records()
        summary = {"run_id": merged.run_id(), **summarize(records)}
        store.write_summary(summary)
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    return MergeResult(store.dir, summary, [s[1].shard for s in shards], missing)


def _merged_backend_info(shards) -> dict[str, Any]:
    """backend.json of a merged run: the first shard's backend description, and every shard's."""
    infos = []
    for run_dir, config, _ in shards:
        try:
            info = json.loads((run_dir / "backend.json").read_text())
        except (OSError, ValueError):
            info = {}
        infos.append({"shard": config.shard, "run_dir": str(run_dir), **info})
    first = next((i for i in infos if "backend" in i), {})
    head = {key: first[key] for key in ("backend", "model", "num_params", "shape", "engine_settings") if key in first}
    hosts = sorted({h for i in infos for h in i.get("hosts", [])})
    return {**head, "replicas": sum(int(i.get("replicas", 1)) for i in infos), "hosts": hosts,
            "devices": [{"shard": i["shard"], "devices": i.get("devices")} for i in infos], "shards": infos}
