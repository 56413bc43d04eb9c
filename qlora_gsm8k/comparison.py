"""Base vs tuned on one eval set, as data: the generations table (one row per question, both answers, the flip),
paired statistics (with a breakdown by problem type where rows have one, and SFT alone vs SFT + RL where RL ran) and
the rows the plots draw. report.py writes them as Markdown."""

from __future__ import annotations

import csv

import pandas as pd

from .eval_rows import EvalRow
from .paired import paired_comparison


def table_csv(table: pd.DataFrame) -> str:
    """CSV that reads back one row per question: every text field quoted. pandas' default quotes only fields
    holding a comma, a quote or `\\n`, so an answer with a bare `\\r` (a model can emit one) split its row."""
    return table.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)


def generations_table(eval_rows: list[EvalRow], base: list[dict], tuned: list[dict], name: str = "") -> pd.DataFrame:
    """One row per question of set `name`: the reference, both models' answers, and the flip between them."""
    if not len(eval_rows) == len(base) == len(tuned):
        raise ValueError(f"row counts differ: eval {len(eval_rows)}, base {len(base)}, tuned {len(tuned)}")
    records = []
    for row, b, t in zip(eval_rows, base, tuned, strict=True):
        if not b["index"] == t["index"] == row.index:
            raise ValueError(f"generations are not aligned at eval row {row.index}")
        records.append(
            {
                "set": name,
                "index": row.index,
                "type": row.type,
                "question": row.question,
                "reference_answer": row.solution or row.number,
                "reference_number": row.number,
                "base_output": b["output"],
                "base_number": b["number_flexible"],
                "base_correct": b["correct_flexible"],
                "base_correct_strict": b["correct_strict"],
                "tuned_output": t["output"],
                "tuned_number": t["number_flexible"],
                "tuned_correct": t["correct_flexible"],
                "tuned_correct_strict": t["correct_strict"],
            }
        )
    table = pd.DataFrame.from_records(records)
    # Four outcomes, never folded: "same" would hide whether the questions both got right or both got wrong.
    table["flip"] = "both_wrong"
    table.loc[table.base_correct & table.tuned_correct, "flip"] = "both_right"
    table.loc[~table.base_correct & table.tuned_correct, "flip"] = "wrong_to_right"
    table.loc[table.base_correct & ~table.tuned_correct, "flip"] = "right_to_wrong"
    return table


def compare_metrics(table: pd.DataFrame, perplexity: dict) -> dict:
    """Paired statistics on flexible (and strict) exact match plus perplexity deltas."""
    paired = paired_comparison(table.base_correct.tolist(), table.tuned_correct.tolist())
    strict = paired_comparison(table.base_correct_strict.tolist(), table.tuned_correct_strict.tolist())
    paired["strict_flips_wrong_to_right"] = strict["flips_wrong_to_right"]
    paired["strict_flips_right_to_wrong"] = strict["flips_right_to_wrong"]
    paired["strict_mcnemar_p"] = strict["mcnemar_p"]
    paired["strict_accuracy_diff"] = strict["accuracy_diff"]
    paired["examples"] = len(table)
    result = {"paired": paired}
    if perplexity:
        base, tuned = perplexity["base"], perplexity["tuned"]
        result["delta"] = {
            "perplexity": tuned["perplexity"] - base["perplexity"],
            "mean_nll": tuned["mean_nll"] - base["mean_nll"],
        }
        # The total split at the base in 4-bit (what training starts from): quantization + training = total.
        # Absent from runs made before the 4-bit base was measured.
        if "base_4bit" in perplexity:
            base_4bit = perplexity["base_4bit"]
            for key in ("perplexity", "mean_nll"):
                result["delta"][f"quantization_{key}"] = base_4bit[key] - base[key]
                result["delta"][f"training_{key}"] = tuned[key] - base_4bit[key]
    return result


FLIP_OUTCOMES = ("wrong_to_right", "right_to_wrong", "both_right", "both_wrong")


def by_type(table: pd.DataFrame) -> dict[str, dict]:
    """Paired comparison within each problem type (SVAMP's Addition, Subtraction, …); {} for rows without types."""
    breakdown = {}
    for kind, rows in table[table.type.notna()].groupby("type", sort=True):
        paired = paired_comparison(rows.base_correct.tolist(), rows.tuned_correct.tolist())
        breakdown[kind] = {
            "examples": len(rows),
            "base": float(rows.base_correct.mean()),
            "tuned": float(rows.tuned_correct.mean()),
            **{k: paired[k] for k in ("flips_wrong_to_right", "flips_right_to_wrong", "mcnemar_p")},
        }
    return breakdown


def sft_vs_tuned(eval_rows: list[EvalRow], sft: list[dict], tuned: list[dict]) -> dict:
    """SFT alone against SFT + RL (the tuned model when the rl stage trained) on the same questions: both accuracies
    and the paired statistics, flexible and strict."""
    table = generations_table(eval_rows, base=sft, tuned=tuned)
    return {
        "sft_exact_match_flexible": float(table.base_correct.mean()),
        "sft_exact_match_strict": float(table.base_correct_strict.mean()),
        **compare_metrics(table, {})["paired"],
    }


def set_metrics(table: pd.DataFrame, perplexity: dict) -> dict:
    """One set's entry of metrics/compare.json: paired statistics, perplexity deltas where measured, and the
    breakdown by problem type where its rows have types."""
    metrics = compare_metrics(table, perplexity)
    types = by_type(table)
    return {**metrics, "by_type": types} if types else metrics


def accuracy_plot_rows(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One bar per set, model and metric: `bar` names all three, so the bar chart never stacks one onto another."""
    rows = []
    for name, table in tables.items():
        for model in ("base", "tuned"):
            for metric, column in (("flexible", f"{model}_correct"), ("strict", f"{model}_correct_strict")):
                rows.append(
                    {
                        "set": name,
                        "model": model,
                        "metric": f"exact_match_{metric}",
                        "bar": f"{name} {model}, {metric}",
                        "value": table[column].mean(),
                    }
                )
    return pd.DataFrame(rows)


def flips_plot_rows(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for name, table in tables.items():
        counts = table.flip.value_counts()
        rows += [{"outcome": f"{name}: {k}", "questions": int(counts.get(k, 0))} for k in FLIP_OUTCOMES]
    return pd.DataFrame(rows)
