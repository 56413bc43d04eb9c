"""The Markdown report of the base-vs-tuned comparison, the same for every eval set: what produced the numbers, each
set's summary, perplexity, breakdown by type, SFT alone vs SFT + RL where RL ran, its flips and a sample (the numbers
themselves: comparison.py)."""

from __future__ import annotations

import re

import pandas as pd

from .model_sources import model_source
from .peft_methods import method_of

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
