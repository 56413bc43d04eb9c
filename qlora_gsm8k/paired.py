"""Paired statistics of base vs tuned on the same questions: flips, exact McNemar test, bootstrap interval.
Pure Python, no torch: the compare stage imports only this, not the model code."""

from __future__ import annotations

import math
import random


def mcnemar_exact_p(wrong_to_right: int, right_to_wrong: int) -> float:
    """Two-sided exact McNemar test: binomial test of the discordant pairs against p = 0.5."""
    n = wrong_to_right + right_to_wrong
    if n == 0:
        return 1.0
    k = min(wrong_to_right, right_to_wrong)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_diff_ci(base: list[bool], tuned: list[bool], samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval for accuracy(tuned) - accuracy(base)."""
    rng = random.Random(seed)
    n = len(base)
    if n == 0:
        return (0.0, 0.0)
    diffs = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(tuned[i] - base[i] for i in idx) / n)
    diffs.sort()
    return diffs[int(0.025 * samples)], diffs[int(0.975 * samples) - 1]


def paired_comparison(base_correct: list[bool], tuned_correct: list[bool]) -> dict:
    w2r = sum((not b) and t for b, t in zip(base_correct, tuned_correct, strict=True))
    r2w = sum(b and (not t) for b, t in zip(base_correct, tuned_correct, strict=True))
    n = max(len(base_correct), 1)
    low, high = bootstrap_diff_ci(base_correct, tuned_correct)
    return {
        "flips_wrong_to_right": w2r,
        "flips_right_to_wrong": r2w,
        "both_right": sum(b and t for b, t in zip(base_correct, tuned_correct, strict=True)),
        "both_wrong": sum((not b) and (not t) for b, t in zip(base_correct, tuned_correct, strict=True)),
        "accuracy_diff": (sum(tuned_correct) - sum(base_correct)) / n,
        "accuracy_diff_ci95_low": low,
        "accuracy_diff_ci95_high": high,
        "mcnemar_p": mcnemar_exact_p(w2r, r2w),
    }
