"""Base-vs-tuned report: generations table, flips, paired metrics, plot CSVs, Markdown, the compare stage."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import imported_modules
from qlora_gsm8k.generation import Generation
from qlora_gsm8k.paired import mcnemar_exact_p
from qlora_gsm8k.report import (
    accuracy_plot_rows,
    compare_metrics,
    flips_plot_rows,
    generations_table,
    markdown_report,
    table_csv,
)
from qlora_gsm8k.rows import Example, read_json_lines, write_jsonl
from qlora_gsm8k.scoring import score_generations

REPO_ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = [
    Example("How many apples? Q10", "5 + 5 = 10\n#### 10", 10),
    Example("How many pears? Q11", "#### 11", 11),
    Example("How many plums? Q12", "#### 12", 12),
    Example("How many figs? Q13", "#### 13", 13),
    Example("How many kiwis? Q14", "#### 14", 14),
]
# (base output, tuned output) per row:
OUTPUTS = [
    ("I think 3", "so\n#### 10"),  # wrong -> right
    ("#### 11", "it is 7"),  # right -> wrong
    ("#### 12", "#### 12"),  # both right
    ("no idea", "still 0"),  # both wrong
    ("maybe 14", "#### 14"),  # right (flexible) both: same; strict wrong -> right
]


def _scored(which: int) -> list[dict]:
    gens = [Generation(text=o[which], new_tokens=5, hit_token_cap=False) for o in OUTPUTS]
    return score_generations(EXAMPLES, gens)[0]


@pytest.fixture
def table():
    return generations_table(EXAMPLES, _scored(0), _scored(1))


PERPLEXITY = {
    "base": {"perplexity": 12.0, "mean_nll": 2.4849},
    "tuned": {"perplexity": 4.0, "mean_nll": 1.3863},
}


def test_generations_table_flips(table):
    assert table["index"].tolist() == [10, 11, 12, 13, 14]
    assert table["flip"].tolist() == ["wrong_to_right", "right_to_wrong", "both_right", "both_wrong", "both_right"]
    assert table["base_correct"].tolist() == [False, True, True, False, True]
    assert table["tuned_correct"].tolist() == [True, False, True, False, True]
    assert table["base_correct_strict"].tolist() == [False, True, True, False, False]
    assert table["tuned_correct_strict"].tolist() == [True, False, True, False, True]
    assert table["reference_number"].tolist() == ["10", "11", "12", "13", "14"]
    numbers = table["base_number"].tolist()
    assert numbers[:3] + numbers[4:] == ["3", "11", "12", "14"] and pd.isna(numbers[3])
    assert table.loc[0, "tuned_output"] == "so\n#### 10"


def test_generations_csv_reads_back_one_row_per_question(tmp_path):
    """Outputs holding a bare carriage return, newlines, quotes, commas, NUL and U+2028 (a real model can emit
    any of them): read back with pandas and with the csv module, one row per question, each text as written."""
    import csv

    texts = ["so\r#### 10", "line\nbreak", 'say "11"', "1,000 or 12", "nul\x00 13", "sep\u2028#### 14"]
    examples = [Example(f"Question {i}?", f"#### {i}", i) for i in range(len(texts))]
    gens = [Generation(text=t, new_tokens=5, hit_token_cap=False) for t in texts]
    scored = score_generations(examples, gens)[0]
    path = tmp_path / "generations.csv"
    path.write_text(table_csv(generations_table(examples, scored, scored)))

    frame = pd.read_csv(path, keep_default_na=False)
    assert list(frame["base_output"]) == texts and list(frame["index"]) == list(range(len(texts)))
    assert frame["tuned_correct"].dtype == bool
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["tuned_output"] for row in rows] == texts


def test_generations_table_refuses_misaligned_rows():
    base, tuned = _scored(0), _scored(1)
    with pytest.raises(ValueError, match="row counts differ"):
        generations_table(EXAMPLES, base[:-1], tuned)
    swapped = [tuned[1], tuned[0], *tuned[2:]]
    with pytest.raises(ValueError, match="not aligned at eval row 10"):
        generations_table(EXAMPLES, base, swapped)


def test_compare_metrics(table):
    metrics = compare_metrics(table, PERPLEXITY)
    paired = metrics["paired"]
    assert paired["examples"] == 5
    assert paired["flips_wrong_to_right"] == 1 and paired["flips_right_to_wrong"] == 1
    assert paired["both_right"] == 2 and paired["both_wrong"] == 1
    assert paired["accuracy_diff"] == 0.0
    assert paired["mcnemar_p"] == 1.0
    # strict: rows 10 and 14 go wrong -> right, row 11 right -> wrong
    assert paired["strict_flips_wrong_to_right"] == 2 and paired["strict_flips_right_to_wrong"] == 1
    assert paired["strict_mcnemar_p"] == pytest.approx(mcnemar_exact_p(2, 1))
    assert metrics["delta"]["perplexity"] == pytest.approx(-8.0)
    assert metrics["delta"]["mean_nll"] == pytest.approx(1.3863 - 2.4849)
    assert "delta" not in compare_metrics(table, {})
    json.dumps(metrics)  # what the compare stage writes must be JSON


def test_plot_rows(table):
    accuracy = accuracy_plot_rows(table)
    assert accuracy.to_dict("records") == [
        {"model": "base", "metric": "exact_match_flexible", "bar": "base, flexible", "value": pytest.approx(0.6)},
        {"model": "base", "metric": "exact_match_strict", "bar": "base, strict", "value": pytest.approx(0.4)},
        {"model": "tuned", "metric": "exact_match_flexible", "bar": "tuned, flexible", "value": pytest.approx(0.6)},
        {"model": "tuned", "metric": "exact_match_strict", "bar": "tuned, strict", "value": pytest.approx(0.6)},
    ]
    flips = flips_plot_rows(table)
    assert flips.to_dict("records") == [
        {"outcome": "wrong_to_right", "questions": 1},
        {"outcome": "right_to_wrong", "questions": 1},
        {"outcome": "both_right", "questions": 2},
        {"outcome": "both_wrong", "questions": 1},
    ]
    # every bar its own category: nothing stacks (the old plot drew base's 0.3 + 0.25 as one 0.55 bar)
    assert accuracy["bar"].is_unique
    # the CSV dvc plots reads: header with the x/y fields dvc.yaml names
    csv = flips.to_csv(index=False)
    assert csv.splitlines()[0] == "outcome,questions"
    assert pd.read_csv(io.StringIO(csv))["questions"].sum() == len(table)
    assert accuracy.to_csv(index=False).splitlines()[0] == "model,metric,bar,value"


def test_flips_plot_rows_lists_every_outcome_even_when_absent():
    same = generations_table(EXAMPLES, _scored(0), _scored(0))
    assert flips_plot_rows(same).to_dict("records") == [
        {"outcome": "wrong_to_right", "questions": 0},
        {"outcome": "right_to_wrong", "questions": 0},
        {"outcome": "both_right", "questions": 3},
        {"outcome": "both_wrong", "questions": 2},
    ]


def _section(report: str, title: str) -> str:
    start = report.index(f"## {title}")
    end = report.find("\n## ", start + 1)
    return report[start : end if end != -1 else len(report)]


def test_markdown_report_flips_sections(table):
    report = markdown_report(table, compare_metrics(table, PERPLEXITY), samples=2)
    assert report.startswith("# Base vs tuned on the eval slice")
    assert "5 questions" in report
    assert "1 wrong→right, 1 right→wrong" in report
    w2r = _section(report, "Wrong → right (1)")
    assert "### Eval row 10: reference 10, base 3 (wrong), tuned 10 (right)" in w2r
    assert "How many apples? Q10" in w2r and "I think 3" in w2r and "so\n#### 10" in w2r
    assert "Q11" not in w2r
    r2w = _section(report, "Right → wrong (1)")
    assert "### Eval row 11: reference 11, base 11 (right), tuned 7 (wrong)" in r2w
    assert "Q10" not in r2w
    sample = _section(report, "Sample (2)")
    assert "Eval row 10" in sample and "Eval row 11" in sample and "Eval row 12" not in sample


def test_markdown_report_missing_number_is_not_nan(table):
    report = markdown_report(table, compare_metrics(table, {}), samples=5)
    assert "### Eval row 13: reference 13, base no number (wrong), tuned 0 (wrong)" in report
    assert "nan" not in report.lower()


def test_markdown_report_no_flips_and_fences(table):
    same = generations_table(EXAMPLES, _scored(0), _scored(0))
    report = markdown_report(same, compare_metrics(same, {}), samples=0)
    assert "## Wrong → right (0)\n\nNone." in report
    assert "## Right → wrong (0)\n\nNone." in report
    # an output holding a code fence cannot break out of its block
    fenced = table.copy()
    fenced.loc[0, "tuned_output"] = "```\n# injected heading\n```"
    report = markdown_report(fenced, compare_metrics(fenced, {}), samples=0)
    w2r = _section(report, "Wrong → right (1)")
    assert "\n# injected heading" in w2r
    assert w2r.count("```") % 2 == 0
    assert "```\n# injected" not in w2r


def test_markdown_report_says_what_made_the_numbers_and_the_perplexity(table):
    from qlora_gsm8k.params_file import parse_params
    from qlora_gsm8k.report import run_context

    params = parse_params(
        {"peft": {"method": "rslora"}, "lora": {"r": 16, "alpha": 32}, "eval": {"max_new_tokens": 256}}
    )
    report = markdown_report(
        table, compare_metrics(table, PERPLEXITY), samples=0, perplexity=PERPLEXITY, context=run_context(params)
    )
    assert f"Model `{params.model.name}` @ {params.model.revision[:12]}" in report
    assert "rslora r 16, alpha 32, on q_proj, v_proj" in report and "up to 256 tokens" in report
    assert "Response perplexity (lower is better): base 12.000 → tuned 4.000 (-8.000)." in report
    local = run_context(parse_params({"model": {"name": "/models/smollm2"}}))[0]
    assert "`/models/smollm2`;" in local  # a local model has no revision to show


# The base quantized to 4-bit (what training starts from) between them: quantization 12 -> 13, training 13 -> 4.
PERPLEXITY_4BIT = {**PERPLEXITY, "base_4bit": {"perplexity": 13.0, "mean_nll": 2.5649}}


def test_perplexity_change_splits_at_the_4bit_base(table):
    delta = compare_metrics(table, PERPLEXITY_4BIT)["delta"]
    assert delta["quantization_perplexity"] == pytest.approx(1.0)
    assert delta["training_perplexity"] == pytest.approx(-9.0)
    assert delta["quantization_mean_nll"] == pytest.approx(2.5649 - 2.4849)
    assert delta["training_mean_nll"] == pytest.approx(1.3863 - 2.5649)
    # The two parts add up to the total, kept under its old keys for `dvc metrics diff` against older commits.
    assert delta["perplexity"] == pytest.approx(-8.0) and delta["mean_nll"] == pytest.approx(1.3863 - 2.4849)
    # An older run's perplexity files (no 4-bit base): the old keys only, no made-up split.
    assert set(compare_metrics(table, PERPLEXITY)["delta"]) == {"perplexity", "mean_nll"}

    report = markdown_report(table, compare_metrics(table, PERPLEXITY_4BIT), samples=0, perplexity=PERPLEXITY_4BIT)
    assert "Response perplexity (lower is better): base 12.000 → tuned 4.000 (-8.000)." in report
    assert "| base, 16-bit | 12.000 | |" in report
    assert "| base in 4-bit (training starts here) | 13.000 | +1.000 quantization (4-bit − 16-bit base) |" in report
    assert "| tuned | 4.000 | -9.000 training (tuned − 4-bit base) |" in report
    assert "a tuned model worse than the 16-bit base has still learned if its training change is negative" in report
    original = markdown_report(
        table, compare_metrics(table, PERPLEXITY_4BIT), samples=0, perplexity=PERPLEXITY_4BIT, merge_into="original"
    )
    assert "merged into the original 16-bit weights" in original and "still learned" not in original
    older = markdown_report(table, compare_metrics(table, PERPLEXITY), samples=0, perplexity=PERPLEXITY)
    assert "4-bit" not in older


def test_markdown_report_clips_garbage_numbers_and_escapes_control_characters(table):
    garbage = table.copy()
    garbage.loc[0, "tuned_output"] = "noise\x13 and a bare\rreturn " + "7" * 5000
    garbage.loc[0, "tuned_number"] = "8" * 300
    report = markdown_report(garbage, compare_metrics(garbage, {}), samples=0)
    assert "\x13" not in report and "\r" not in report
    assert "noise\\x13 and a bare\\rreturn" in report
    assert "(300 characters)" in report and "8" * 25 not in report
    assert "more characters)" in report


def test_read_json_lines_roundtrip(tmp_path):
    rows = _scored(1)
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert read_json_lines(tmp_path / "g.jsonl") == rows


@pytest.mark.slow
def test_compare_stage_end_to_end(tmp_path):
    write_jsonl(EXAMPLES, tmp_path / "eval.jsonl")
    for label, which in (("base", 0), ("tuned", 1)):
        (tmp_path / f"gen_{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _scored(which)))
    # The base's file holds the base in 4-bit too, as the evaluate stage writes it.
    (tmp_path / "ppl_base.json").write_text(
        json.dumps({"base": PERPLEXITY["base"], "base_4bit": PERPLEXITY_4BIT["base_4bit"]})
    )
    (tmp_path / "ppl_tuned.json").write_text(json.dumps({"tuned": PERPLEXITY["tuned"]}))
    (tmp_path / "params.yaml").write_text("eval:\n  report_samples: 1\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "stages.compare",
        "--params",
        str(tmp_path / "params.yaml"),
        "--eval",
        str(tmp_path / "eval.jsonl"),
        "--base-generations",
        str(tmp_path / "gen_base.jsonl"),
        "--tuned-generations",
        str(tmp_path / "gen_tuned.jsonl"),
        "--base-perplexity",
        str(tmp_path / "ppl_base.json"),
        "--tuned-perplexity",
        str(tmp_path / "ppl_tuned.json"),
        "--metrics-out",
        str(out / "compare.json"),
        "--table-out",
        str(out / "generations.csv"),
        "--report-out",
        str(out / "comparison.md"),
        "--plots-dir",
        str(out / "plots"),
        # SVAMP off: an empty slice and empty generations
        "--svamp",
        str(tmp_path / "empty.jsonl"),
        "--svamp-base-generations",
        str(tmp_path / "empty.jsonl"),
        "--svamp-tuned-generations",
        str(tmp_path / "empty.jsonl"),
        "--svamp-metrics-out",
        str(out / "svamp_compare.json"),
        "--adapter-card",
        str(tmp_path / "adapter_card.md"),
        "--card-out",
        str(out / "model_card.md"),
    ]
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "adapter_card.md").write_text("# QLoRA adapter\n\nTrained.\n\n## Load\n\nfrom_pretrained\n")
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "compare.json").read_text())
    assert metrics["paired"]["flips_wrong_to_right"] == 1
    assert metrics["delta"]["perplexity"] == pytest.approx(-8.0)
    assert metrics["delta"]["training_perplexity"] == pytest.approx(-9.0)
    csv = pd.read_csv(out / "generations.csv")
    assert csv["index"].tolist() == [10, 11, 12, 13, 14]
    assert csv["flip"].tolist()[:2] == ["wrong_to_right", "right_to_wrong"]
    report = (out / "comparison.md").read_text()
    assert "## Sample (1)" in report and "| base in 4-bit (training starts here) | 13.000 |" in report
    assert "still learned" in report  # the shipped eval.merge_into (dequantized) reached the report
    # The adapter's card, now with what was measured (the card itself is the train stage's, left as it was).
    card = (out / "model_card.md").read_text()
    assert card.startswith("# QLoRA adapter\n\nTrained.\n\n## Evaluation") and card.endswith(
        "## Load\n\nfrom_pretrained\n"
    )
    assert "| GSM8K exact match, strict-match | 0.400 | 0.600 |" in card
    assert "| response perplexity (lower is better) | 12 | 4 |" in card
    assert pd.read_csv(out / "plots" / "flips.csv")["questions"].tolist() == [1, 1, 2, 1]
    assert set(pd.read_csv(out / "plots" / "accuracy.csv")["model"]) == {"base", "tuned"}
    assert json.loads((out / "svamp_compare.json").read_text()) == {"svamp": {"paired": {"examples": 0}}}
    first = {name: (out / "plots" / name).read_bytes() for name in ("accuracy.png", "flips.png", "svamp_by_type.png")}
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in first.values())
    # Same numbers, same bytes: a re-run leaves DVC nothing to see.
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and all((out / "plots" / n).read_bytes() == d for n, d in first.items())


@pytest.mark.parametrize("stage", ["compare", "fetch", "fetch_svamp"])
def test_stages_without_a_model_do_not_import_torch(stage):
    """Every stage is a process of its own: importing torch costs it seconds (2.3 s on this project's CPU box),
    so stages that load no model must not, e.g. through the statistics compare shares with evaluation."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = imported_modules(result.stderr)
    assert "qlora_gsm8k.cli" in imported, "the stage's imports were not seen"
    assert "torch" not in imported
