"""Budget allocation (Snell et al. 2024), by job:

- policy.py: the library (load, allocate, allocate_batch, Plan); it imports no fitting code;
- fit.py: fitting a policy from finished runs, through ttscale.analysis.runs;
- evaluate.py: held-out evaluation against best-of-N at equal FLOPs.

Importing this package loads the library only; `fit_policy` and `evaluate_policy` load their
modules on first use.
"""

from ttscale.allocation.policy import (  # noqa: F401
    AllocationError, AllocationPolicy, BinTable, Entry, Plan, Probe, Setting, describe_setting, greedy_allocation,
    upper_hull,
)


def __getattr__(name: str):
    """fit_policy and evaluate_policy, loaded on first use."""
    if name == "fit_policy":
        from ttscale.allocation.fit import fit_policy

        return fit_policy
    if name == "evaluate_policy":
        from ttscale.allocation.evaluate import evaluate_policy

        return evaluate_policy
    raise AttributeError(f"module 'ttscale.allocation' has no attribute {name!r}")
