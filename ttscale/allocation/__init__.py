"""Budget allocation (Snell et al. 2024), by job:

- policy.py: the library (load, allocate, allocate_batch, Plan); it imports no fitting code;
- fit.py: fitting a policy from finished runs, through ttscale.analysis.runs;
- evaluate.py: held-out evaluation against best-of-N at equal FLOPs.

The package re-exports the library's names, fit_policy and evaluate_policy.
"""

from ttscale.allocation.evaluate import evaluate_policy  # noqa: F401
from ttscale.allocation.fit import fit_policy  # noqa: F401
from ttscale.allocation.policy import (  # noqa: F401
    AllocationError, AllocationPolicy, BinTable, Entry, Plan, Probe, Setting, describe_setting, greedy_allocation,
    upper_hull,
)
