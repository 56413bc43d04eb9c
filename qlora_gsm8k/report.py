"""Base-vs-tuned comparison, per eval set and the same for every set: the generations table, paired statistics
(with a breakdown by problem type where rows have one), plot data, Markdown report."""

from __future__ import annotations

import csv
import re

import pandas as pd

from .eval_rows import EvalRow
from .model_sources import model_source
from .paired import paired_comparison
from .peft_methods import method_of


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


_NUMBER_CHARS = 24
_OUTPUT_CHARS = 3000
# Control characters other than newline and tab: a garbage answer (a random-weight model's) would put raw bytes
# such as \x13 or a bare \r into a Markdown file.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _number(value) -> str:
    """An extracted number for the report; pandas stores a missing one as NaN, which must not read as 'nan'.
    A number a garbage answer strings together (300 digits) is clipped, saying how long it was."""
    if value is None or pd.isna(value):
        return "no number"
    text = str(value)
    return text if len(text) <= _NUMBER_CHARS else f"{text[:_NUMBER_CHARS]}… ({len(text)} characters)"


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: "\\r" if m.group() == "\r" else f"\\x{ord(m.group()):02x}", text)


def _block(text: str) -> str:
    text = _printable(str(text).replace("```", "ʼʼʼ").strip())
    if len(text) > _OUTPUT_CHARS:
        text = f"{text[:_OUTPUT_CHARS]}\n… ({len(text) - _OUTPUT_CHARS} more characters)"
    return "```\n" + text + "\n```"


def run_context(params) -> list[str]:
    """What produced the numbers: model, data slices, method and its key settings, decoding (Markdown lines)."""
    data, train, peft, lora, cfg = params.data, params.train, params.peft, params.lora, params.eval
    method = peft.method
    if "lora.r" in method_of(params).reads:
        method += f" r {lora.r}, alpha {lora.alpha}, on {', '.join(lora.target_modules)}"
    pinned = model_source(params.model).revision()
    revision = f" @ {pinned[:12]}" if pinned else ""
    sets = ", ".join(
        f"{name} ({s.size} rows of `{s.source or data.source}` {s.split} from {s.offset})"
        for name, s in params.enabled_sets().items()
    )
    return [
        f"Model `{params.model.name}`{revision}; data `{data.source}`: {data.train_size} train rows from "
        f"{data.train_offset}. Eval sets: {sets}. {method}; lr {train.learning_rate}, "
        f"{train.epochs:g} epoch(s), micro-batch {train.micro_batch_size}. Greedy answers up to "
        f"{cfg.max_new_tokens} tokens in {cfg.dtype}; the tuned model merged into the {cfg.merge_into} weights.",
        "",
    ]


def perplexity_line(perplexity: dict, merge_into: str = "dequantized") -> list[str]:
    """Response perplexity base → tuned: on a small slice often the one number that moves. With the base in 4-bit
    beside them, the change split into what quantization cost and what training changed from there."""
    if not perplexity:
        return []
    base, tuned = perplexity["base"]["perplexity"], perplexity["tuned"]["perplexity"]
    lines = [f"Response perplexity (lower is better): base {base:.3f} → tuned {tuned:.3f} ({tuned - base:+.3f}).", ""]
    if "base_4bit" not in perplexity:
        return lines
    base_4bit = perplexity["base_4bit"]["perplexity"]
    if merge_into == "dequantized":
        reading = (
            "Quantization is what rounding the base's weights to 4-bit costs before any training, training what the "
            "adapter changed from there; the tuned model is those 4-bit weights plus the adapter, so it carries both: "
            "a tuned model worse than the 16-bit base has still learned if its training change is negative."
        )
    else:
        reading = (
            "The tuned model was merged into the original 16-bit weights, not the 4-bit ones it was trained on: its "
            "change from the 4-bit base also holds the quantization's cost taken back, so read it against the 16-bit "
            "base."
        )
    return [
        *lines,
        "| response perplexity | value | change |",
        "|---|---|---|",
        f"| base, 16-bit | {base:.3f} | |",
        f"| base in 4-bit (training starts here) | {base_4bit:.3f} | {base_4bit - base:+.3f} quantization "
        "(4-bit − 16-bit base) |",
        f"| tuned | {tuned:.3f} | {tuned - base_4bit:+.3f} training (tuned − 4-bit base) |",
        "",
        reading,
        "",
    ]


def markdown_report(
    sets: dict[str, tuple[pd.DataFrame, dict, dict]],
    samples: int,
    context: list[str] | None = None,
    merge_into: str = "dequantized",
) -> str:
    """Every enabled set, the same way: its summary, perplexity (sets with solutions), breakdown by type (sets with
    types), then its flips and a sample side by side. `sets`: name -> (generations table, set_metrics, perplexity by
    model); `context` (run_context) says what made the numbers, `merge_into` (eval.merge_into) how deltas read."""
    lines = ["# Base vs tuned on the eval sets", "", *(context or [])]
    for name, (table, metrics, perplexity) in sets.items():
        lines += set_section(name, table, metrics, perplexity, samples, merge_into)
    return "\n".join(lines)


def set_section(name: str, table, metrics: dict, perplexity: dict, samples: int, merge_into: str) -> list[str]:
    paired = metrics["paired"]
    lines = [
        f"## {name}",
        "",
        f"{paired['examples']} questions. Exact match (flexible): base {table.base_correct.mean():.3f}, "
        f"tuned {table.tuned_correct.mean():.3f}; difference {paired['accuracy_diff']:+.3f} "
        f"(95% paired bootstrap CI {paired['accuracy_diff_ci95_low']:+.3f} … "
        f"{paired['accuracy_diff_ci95_high']:+.3f}).",
        f"Flips: {paired['flips_wrong_to_right']} wrong→right, {paired['flips_right_to_wrong']} right→wrong; "
        f"exact McNemar p = {paired['mcnemar_p']:.3g}.",
        "",
        *perplexity_line(perplexity, merge_into),
        *by_type_table(metrics.get("by_type", {})),
        *sft_line(metrics.get("sft_vs_tuned")),
    ]
    for title, rows in (
        ("Wrong → right", table[table.flip == "wrong_to_right"]),
        ("Right → wrong", table[table.flip == "right_to_wrong"]),
        ("Sample", table.head(samples)),
    ):
        lines += [f"### {name}: {title} ({len(rows)})", "", *([] if len(rows) else ["None.", ""])]
        for row in rows.itertuples():
            lines += [
                f"#### {name} row {row.index}: reference {row.reference_number}, "
                f"base {_number(row.base_number)} ({'right' if row.base_correct else 'wrong'}), "
                f"tuned {_number(row.tuned_number)} ({'right' if row.tuned_correct else 'wrong'})",
                "",
                *("**Question**", "", _block(row.question), ""),
                *("**Base**", "", _block(row.base_output), ""),
                *("**Tuned**", "", _block(row.tuned_output), ""),
            ]
    return lines


def sft_line(paired: dict | None) -> list[str]:
    """The RL step alone: SFT against SFT + RL (tuned), when the rl stage trained."""
    if not paired:
        return []
    strict, flexible = paired["sft_exact_match_strict"], paired["sft_exact_match_flexible"]
    return [
        f"**SFT alone → SFT + RL (tuned)**, the same questions: strict {strict:.3f} → "
        f"{strict + paired['strict_accuracy_diff']:.3f}, flexible {flexible:.3f} → "
        f"{flexible + paired['accuracy_diff']:.3f}; "
        f"flips (flexible) {paired['flips_wrong_to_right']} wrong→right, {paired['flips_right_to_wrong']} right→wrong, "
        f"McNemar p = {paired['mcnemar_p']:.3g} (strict: {paired['strict_flips_wrong_to_right']} / "
        f"{paired['strict_flips_right_to_wrong']}, p = {paired['strict_mcnemar_p']:.3g}).",
        "",
    ]


def by_type_table(breakdown: dict[str, dict]) -> list[str]:
    """A set's results per problem type (Markdown lines); nothing for a set without types."""
    if not breakdown:
        return []
    lines = [
        "| type | questions | base | tuned | wrong→right | right→wrong | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in breakdown.items():
        lines.append(
            f"| {kind} | {row['examples']} | {row['base']:.3f} | {row['tuned']:.3f} | "
            f"{row['flips_wrong_to_right']} | {row['flips_right_to_wrong']} | {row['mcnemar_p']:.3g} |"
        )
    return [*lines, ""]
