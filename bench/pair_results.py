"""Two committed runs' tuned answers, question by question: which questions only one of them got right, the exact
McNemar p, and, where both files keep the answers' text, how many are word for word the same (a re-run of one recipe
on another machine: all of them, if it reproduced). For runs kept as files under bench/results/ (tools/compare_runs.py
does the same for DVC experiments).

A run is a pipeline report (`reports/generations.csv[.gz]`, tuned columns) or a bench/quality.py generations file
(`generations_*.jsonl[.gz]`).

    python bench/pair_results.py \
        bench/results/quality4/q10/generations_rslora-r16-3ep-lr1e-3-mb32_dequantized.jsonl.gz \
        bench/results/preset_2026-12-07/reports/generations_gsm8k.csv.gz
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qlora_gsm8k.paired import paired_comparison  # noqa: E402


def _text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def correct_by_question(path: Path, eval_set: str) -> dict[int, dict]:
    """question index -> {"flexible": …, "strict": …, "text": the answer or None} of the run's tuned answers."""
    with _text(path) as lines:
        if ".csv" in path.name:
            return {
                int(row["index"]): {
                    "flexible": row["tuned_correct"] == "True",
                    "strict": row["tuned_correct_strict"] == "True",
                    "text": row.get("tuned_output"),
                }
                for row in csv.DictReader(lines)
                if row["set"] == eval_set
            }
        rows = (json.loads(line) for line in lines if line.strip())
        return {
            int(row["index"]): {
                "flexible": bool(row["correct_flexible"]),
                "strict": bool(row["correct_strict"]),
                "text": row.get("output"),
            }
            for row in rows
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--set", default="gsm8k", help="eval set of a pipeline report (a quality.py file has one)")
    args = parser.parse_args()
    a, b = correct_by_question(args.run_a, args.set), correct_by_question(args.run_b, args.set)
    if a.keys() != b.keys():
        sys.exit(f"the runs answered different questions ({len(a)} vs {len(b)})")
    order = sorted(a)
    for match in ("flexible", "strict"):
        correct_a, correct_b = [a[q][match] for q in order], [b[q][match] for q in order]
        paired = paired_comparison(correct_a, correct_b)
        print(
            f"{match}: A {sum(correct_a) / len(order):.2%}, B {sum(correct_b) / len(order):.2%} over {len(order)} "
            f"questions; right only in A {paired['flips_right_to_wrong']}, only in B {paired['flips_wrong_to_right']}; "
            f"exact McNemar p {paired['mcnemar_p']:.3g}; B - A 95% paired bootstrap CI "
            f"{paired['accuracy_diff_ci95_low']:+.2%} … {paired['accuracy_diff_ci95_high']:+.2%}"
        )
    if all(a[q]["text"] is not None and b[q]["text"] is not None for q in order):
        same = sum(a[q]["text"] == b[q]["text"] for q in order)
        print(f"answers word for word the same: {same} of {len(order)}")


if __name__ == "__main__":
    main()
