"""Which problems a run takes, and the seeds it draws them with.

Every rule here is a stable hash (sha256) of the problem id, never Python's salted hash(), so it
gives the same answer in every process and on every machine:
- the split: half "a" (fitting: policies, probes, trained verifiers) or "b" (held out);
- the shard: which of K independent runs (`--shard I/K`) takes a problem;
- the seed of a problem's requests (and of a trained verifier's rollouts), from the run's seed.

A run's problems are the benchmark's first `limit` (the benchmark's `load(limit=...)`), then its
split's half, then its shard's part of that (both filters, so their order does not matter).
"""

from __future__ import annotations

import hashlib
from typing import Literal, Sequence

from ttscale.types import Problem

Split = Literal["all", "a", "b"]  # "all" holds every problem


def split_of(problem_id: str) -> str:
    """A problem's half, "a" or "b", from a stable hash of its id (the same on every machine)."""
    return "ab"[hashlib.sha256(problem_id.encode()).digest()[0] & 1]


def in_split(problem_id: str, split: Split) -> bool:
    """Whether a problem belongs to the split ("all" holds every problem)."""
    return split == "all" or split_of(problem_id) == split


def shard_index(problem_id: str, count: int) -> int:
    """The shard of a problem: sha256 of its id mod `count` (stable across processes and machines,
    unlike Python's salted hash())."""
    digest = hashlib.sha256(problem_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_split(problems: Sequence[Problem], split: str | None) -> list[Problem]:
    """The problems of one half, a or b (`split_of`); all of them when `split` is None."""
    if split is None:
        return list(problems)
    return [problem for problem in problems if split_of(problem.id) == split]


def select_shard(problems: Sequence[Problem], shard: tuple[int, int] | None) -> list[Problem]:
    """The problems of shard (index, count) (`shard_index`); all of them when `shard` is None."""
    if shard is None:
        return list(problems)
    index, count = shard
    return [problem for problem in problems if shard_index(problem.id, count) == index]


def select_problems(problems: Sequence[Problem], *, split: str | None, shard: tuple[int, int] | None) -> list[Problem]:
    """What a run evaluates of the (already limited) problems: its split's half, then its shard's
    part of that (a RunConfig gives `split=config.split, shard=config.shard_of()`)."""
    return select_shard(select_split(problems, split), shard)


def derive_seed(seed: int, *parts: object) -> int:
    """A request seed derived from `seed` and `parts` (a problem id; "rollout", a solution key and a
    step): stable across resumes, concurrency and problem order, and below 2**31 (what every
    backend takes). sha256 of "seed|part|part...", so recorded runs keep their seeds."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
