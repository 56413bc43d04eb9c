"""bench/pair_results.py: two kept runs paired question by question, from either file layout."""

import csv
import gzip
import json
import sys
from pathlib import Path

from conftest import REPO_ROOT, run


def test_pairs_a_quality_file_against_a_pipeline_report(tmp_path):
    quality = tmp_path / "generations_x.jsonl.gz"
    with gzip.open(quality, "wt", encoding="utf-8") as out:
        for index, (flexible, strict) in enumerate([(True, True), (True, False), (False, False), (False, False)]):
            out.write(json.dumps({"index": index, "correct_flexible": flexible, "correct_strict": strict}) + "\n")
    report = tmp_path / "generations.csv"
    with report.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, ["set", "index", "tuned_correct", "tuned_correct_strict"])
        writer.writeheader()
        for index, (flexible, strict) in enumerate([(False, False), (True, True), (True, True), (True, False)]):
            writer.writerow({"set": "gsm8k", "index": index, "tuned_correct": flexible, "tuned_correct_strict": strict})
        writer.writerow({"set": "svamp", "index": 0, "tuned_correct": True, "tuned_correct_strict": True})
    done = run([sys.executable, "bench/pair_results.py", str(quality), str(report)], cwd=REPO_ROOT)
    flexible, strict = done.stdout.splitlines()
    assert "A 50.00%, B 75.00% over 4 questions; right only in A 1, only in B 2" in flexible
    assert "A 25.00%, B 50.00% over 4 questions; right only in A 1, only in B 2" in strict
    assert "p 1" in flexible


def _report(path: Path, answers: list[tuple[str, bool]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, ["set", "index", "tuned_output", "tuned_correct", "tuned_correct_strict"])
        writer.writeheader()
        for index, (text, right) in enumerate(answers):
            writer.writerow(
                {
                    "set": "gsm8k",
                    "index": index,
                    "tuned_output": text,
                    "tuned_correct": right,
                    "tuned_correct_strict": right,
                }
            )
    return path


def test_counts_the_answers_two_reports_share_word_for_word(tmp_path):
    a = _report(tmp_path / "a.csv", [("#### 3", True), ("so 4,\r\n#### 4", True), ("#### 9", False)])
    b = _report(tmp_path / "b.csv", [("#### 3", True), ("so 4,\r\n#### 4", True), ("#### 8", False)])
    done = run([sys.executable, "bench/pair_results.py", str(a), str(b)], cwd=REPO_ROOT)
    assert done.stdout.splitlines()[-1] == "answers word for word the same: 2 of 3"
