"""Two finished runs of the pipeline compared on the same questions (is B better than A?), and many runs ranked
against one baseline with a Holm correction. Pure Python, no torch, no DVC: tools/compare_runs.py reads the runs'
files through DVC and hands their contents here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .paired import paired_comparison

# What changes the answers to the same questions besides the model: the prompt (system message) and the token cap.
# Generation is always greedy. Batch sizes and eval.dtype are left out: they change speed or the model's
# precision, which a run may legitimately vary and the params diff then shows.
DECODING_PARAMS = ("prompt", "eval.max_new_tokens")


def flatten_params(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'learning_rate': 2e-4}} -> {'train.learning_rate': 2e-4}; lists stay values (target modules)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    if not tree and prefix:
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def params_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flattened keys whose values differ, {key: {'a': value in a, 'b': value in b}}; a missing key reads None."""
    flat_a, flat_b = flatten_params(a), flatten_params(b)
    keys = sorted(set(flat_a) | set(flat_b))
    return {k: {"a": flat_a.get(k), "b": flat_b.get(k)} for k in keys if flat_a.get(k) != flat_b.get(k)}


def under(keys: tuple[str, ...], flat: dict[str, Any]) -> dict[str, Any]:
    """The entries of a flattened mapping that are one of `keys` or lie beneath one (`prompt` -> `prompt.system`)."""
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(key + ".") for key in keys)}


def describe_diff(diff: dict[str, dict[str, Any]]) -> str:
    """'train.learning_rate 0.0002 vs 0.01, lora.r 16 vs 8'."""
    return ", ".join(f"{key} {json.dumps(change['a'])} vs {json.dumps(change['b'])}" for key, change in diff.items())


def jsonl_rows(text: str) -> list[dict]:
    # Split on "\n" only: str.splitlines() also breaks inside JSON strings on U+2028 and the like.
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@dataclass(frozen=True)
class Question:
    """One eval row as a run saw it: its index in the source split, its text and its reference answer."""

    index: int
    text: str
    reference: str


class QuestionsDiffer(ValueError):
    """Two runs did not answer the same questions; the message says where they part."""


def _by_index(questions: list[Question], side: str) -> dict[int, Question]:
    found: dict[int, Question] = {}
    for question in questions:
        if question.index in found:
            raise QuestionsDiffer(f"{side} lists eval row {question.index} twice")
        found[question.index] = question
    return found


def _some(indices: set[int], limit: int = 5) -> str:
    shown = sorted(indices)
    return ", ".join(map(str, shown[:limit])) + (" …" if len(shown) > limit else "")


def match_questions(a: list[Question], b: list[Question]) -> list[int]:
    """The row indices both runs answered, in A's order; QuestionsDiffer unless they answered exactly the same
    questions (same rows, same text, same reference), in whatever order."""
    rows_a, rows_b = _by_index(a, "A"), _by_index(b, "B")
    only_a, only_b = set(rows_a) - set(rows_b), set(rows_b) - set(rows_a)
    if only_a or only_b:
        parts = [f"A answered {len(rows_a)}, B {len(rows_b)}"]
        if only_a:
            parts.append(f"rows only A answered: {_some(only_a)}")
        if only_b:
            parts.append(f"rows only B answered: {_some(only_b)}")
        raise QuestionsDiffer("; ".join(parts))
    for index, question in rows_a.items():
        other = rows_b[index]
        if question.text != other.text:
            raise QuestionsDiffer(f"eval row {index} reads differently (another data source or revision?)")
        if question.reference != other.reference:
            raise QuestionsDiffer(f"eval row {index} has another reference answer")
    return [q.index for q in a]


def align_generations(order: list[int], generations: list[dict], side: str) -> list[dict]:
    """A run's generation rows in `order` (row indices); ValueError when a row is missing or answered twice."""
    by_index: dict[int, dict] = {}
    for row in generations:
        if row["index"] in by_index:
            raise ValueError(f"{side}'s generations answer eval row {row['index']} twice")
        by_index[row["index"]] = row
    missing = set(order) - set(by_index)
    if missing or len(by_index) != len(order):
        raise ValueError(f"{side}'s generations do not match its eval rows (missing: {_some(missing) or 'none'})")
    return [by_index[i] for i in order]


def _share(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def compare_generations(a: list[dict], b: list[dict]) -> dict[str, Any]:
    """B against A on the same questions (rows aligned): accuracies, flips, exact McNemar p and the paired
    bootstrap 95% interval of accuracy(B) - accuracy(A), on flexible extraction and on strict."""
    flexible_a, flexible_b = [r["correct_flexible"] for r in a], [r["correct_flexible"] for r in b]
    strict_a, strict_b = [r["correct_strict"] for r in a], [r["correct_strict"] for r in b]
    flexible = paired_comparison(flexible_a, flexible_b)
    strict = paired_comparison(strict_a, strict_b)
    return {
        "n": len(a),
        "accuracy_a": _share(flexible_a),
        "accuracy_b": _share(flexible_b),
        "accuracy_diff": flexible["accuracy_diff"],
        "wrong_to_right": flexible["flips_wrong_to_right"],
        "right_to_wrong": flexible["flips_right_to_wrong"],
        "both_right": flexible["both_right"],
        "both_wrong": flexible["both_wrong"],
        "mcnemar_p": flexible["mcnemar_p"],
        "ci95": [flexible["accuracy_diff_ci95_low"], flexible["accuracy_diff_ci95_high"]],
        "accuracy_strict_a": _share(strict_a),
        "accuracy_strict_b": _share(strict_b),
        "strict_wrong_to_right": strict["flips_wrong_to_right"],
        "strict_right_to_wrong": strict["flips_right_to_wrong"],
        "strict_mcnemar_p": strict["mcnemar_p"],
        "strict_ci95": [strict["accuracy_diff_ci95_low"], strict["accuracy_diff_ci95_high"]],
        "hit_cap_a": _share([r["hit_token_cap"] for r in a]),
        "hit_cap_b": _share([r["hit_token_cap"] for r in b]),
    }


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: the k-th smallest is multiplied by (m - k + 1),
    kept monotone and capped at 1. Rejecting where adjusted p < alpha holds the family-wise error at alpha."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def rank_against_baseline(comparisons: dict[str, dict], alpha: float = 0.05) -> list[dict]:
    """Each run's comparison with the baseline (compare_generations, baseline as A) plus its Holm-adjusted p over
    all the runs and `better`: more accurate than the baseline at adjusted p < alpha. Best accuracy first; ties
    by p-value, then name."""
    names = list(comparisons)
    adjusted = holm_adjusted([comparisons[n]["mcnemar_p"] for n in names])
    rows = [
        {
            "run": name,
            **comparisons[name],
            "holm_p": p,
            "better": p < alpha and comparisons[name]["accuracy_diff"] > 0,
        }
        for name, p in zip(names, adjusted, strict=True)
    ]
    return sorted(rows, key=lambda r: (-r["accuracy_b"], r["mcnemar_p"], r["run"]))
