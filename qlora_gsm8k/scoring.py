"""Answer scoring as lm-evaluation-harness scores gsm8k: exact match of the number each output answers with (read by
answers.py: strict-match, flexible-extract) against the reference's, and the health of the outputs. Only the
evaluation stages and compare import this, so a scoring fix re-runs those and nothing upstream."""

from __future__ import annotations

from .answers import extract_flexible, extract_strict, is_correct
from .rows import normalize_number


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same output (0 = none)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def score_generations(eval_rows: list, generations: list) -> tuple[list[dict], dict]:
    """Per-row records and summary: exact match (strict/flexible) against each row's reference number, format gap
    and health. `eval_rows`: eval_rows.EvalRow (index, number); `generations`: generation.Generation records (text,
    new_tokens, hit_token_cap), one per row."""
    rows = []
    for row, gen in zip(eval_rows, generations, strict=True):
        strict, flexible = extract_strict(gen.text), extract_flexible(gen.text)
        reference = normalize_number(row.number)
        rows.append(
            {
                "index": row.index,
                "output": gen.text,
                "number_strict": strict,
                "number_flexible": flexible,
                "correct_strict": is_correct(strict, reference),
                "correct_flexible": is_correct(flexible, reference),
                "new_tokens": gen.new_tokens,
                "hit_token_cap": gen.hit_token_cap,
                "repetition_rate": repetition_rate(gen.text),
            }
        )
    n = max(len(rows), 1)
    strict_acc = sum(r["correct_strict"] for r in rows) / n
    flexible_acc = sum(r["correct_flexible"] for r in rows) / n
    summary = {
        "exact_match_strict": strict_acc,
        "exact_match_flexible": flexible_acc,
        # How much accuracy is lost only to answer format (no '#### N' line).
        "format_gap": flexible_acc - strict_acc,
        "format_compliance": sum(r["number_strict"] is not None for r in rows) / n,
        "hit_token_cap_rate": sum(r["hit_token_cap"] for r in rows) / n,
        "repetition_rate": sum(r["repetition_rate"] for r in rows) / n,
        "mean_new_tokens": sum(r["new_tokens"] for r in rows) / n,
        "examples": len(rows),
    }
    return rows, summary
