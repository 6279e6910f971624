"""Kang et al.'s self-certainty (full vocabulary) against the top-k proxy, on the same samples.

    ttscale eval ... -s best-of-n --n 8 -S logprobs=10 -o runs                      # RUN: samples with top-k confidences
    ttscale eval ... --backend replay --backend-option run=RUN -v self-certainty \\
        -V model=smollm2-135m --selection borda-vote -o rescored                     # RESCORED: the same samples, full score
    python perf/self_certainty_vs_topk.py RUN RESCORED

Prints each rule's accuracy (majority; the rescored run's borda-vote, weighted-vote and max-score
by self-certainty; borda-vote and max-score by topk-certainty), how often the two scores order a
problem's samples oppositely, their Spearman correlation, and each score's AUROC for a sample
being correct. Reads the two runs' samples.jsonl only (no engine).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ttscale.strategies.best_of_n import borda_vote
from ttscale.types import Candidate


def records(run: Path) -> dict[str, dict]:
    return {r["problem_id"]: r for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())}


def auroc(scores, labels) -> float:
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return math.nan
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))


def ranks(values) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the best-of-N run recorded with -S logprobs=K")
    parser.add_argument("rescored", type=Path, help="its replay scored by the self-certainty verifier")
    parser.add_argument("--k", type=int, default=10, help="the K of -S logprobs=K")
    args = parser.parse_args()
    original, rescored = records(args.run), records(args.rescored)
    correct: dict[str, list[bool]] = {}
    full_all, topk_all, ok_all, rhos = [], [], [], []
    opposite = same = 0
    for pid, o in original.items():
        samples, scored = o["candidates"], rescored[pid]["candidates"]
        if [c["text"] for c in samples] != [c["text"] for c in scored]:
            raise SystemExit(f"{pid}: the rescored run's samples are not the original's")
        full = [c["score"] for c in scored]
        topk = [sum(c["token_confidences"]) / len(c["token_confidences"]) - math.log(args.k) if c["token_confidences"] else 0.0
                for c in samples]
        ok = [c["correct"] for c in samples]
        full_all += full
        topk_all += topk
        ok_all += ok
        for rule in ("majority", "borda-vote", "weighted-vote", "max-score"):
            name = rule if rule == "majority" else f"{rule} by self-certainty"
            correct.setdefault(name, []).append(rescored[pid]["selections"][rule]["correct"])
        answer_ok = {c["answer"]: c["correct"] for c in samples if c["answer"] is not None}
        voters = [Candidate(text="", answer=c["answer"], num_tokens=1, finish_reason="stop", score=s) for c, s in zip(samples, topk)]
        correct.setdefault("borda-vote by topk-certainty", []).append(answer_ok.get(borda_vote(voters, str.__eq__), False))
        best = max(range(len(topk)), key=lambda i: (samples[i]["answer"] is not None, topk[i]))
        correct.setdefault("max-score by topk-certainty", []).append(samples[best]["answer"] is not None and samples[best]["correct"])
        for i in range(len(full)):
            for j in range(i + 1, len(full)):
                sign = (full[i] - full[j]) * (topk[i] - topk[j])
                opposite += sign < 0
                same += sign > 0
        rhos.append(float(np.corrcoef(ranks(full), ranks(topk))[0, 1]))
    print(f"{len(original)} problems, {len(full_all)} samples")
    for rule, oks in correct.items():
        print(f"  {rule:32s} {np.mean(oks):.3f} ({sum(oks)}/{len(oks)})")
    print(f"sample pairs of a problem ordered oppositely: {opposite}/{opposite + same} = {opposite / (opposite + same):.3f}")
    print(f"Spearman rho within problems (mean) {np.nanmean(rhos):.3f}, pooled {np.corrcoef(ranks(full_all), ranks(topk_all))[0, 1]:.3f}")
    print(f"AUROC for a sample being correct: self-certainty {auroc(full_all, ok_all):.3f}, topk-certainty {auroc(topk_all, ok_all):.3f}")


if __name__ == "__main__":
    main()
