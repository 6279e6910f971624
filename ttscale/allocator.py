"""Moved: budget allocation is the package ttscale.allocation (policy, fit, evaluate).

This module keeps the old import path working for the public names.
"""

from ttscale.allocation import (  # noqa: F401
    AllocationError, AllocationPolicy, BinTable, Entry, Plan, Probe, Setting, describe_setting, greedy_allocation,
    in_split, split_of, upper_hull,
)


def __getattr__(name: str):
    """fit_policy and evaluate_policy, loaded on first use (the library needs neither)."""
    import ttscale.allocation

    return getattr(ttscale.allocation, name)
