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
from qlora_gsm8k.comparison import (
    accuracy_plot_rows,
    compare_metrics,
    flips_plot_rows,
    generations_table,
    set_metrics,
    table_csv,
)
from qlora_gsm8k.eval_rows import EvalRow, write_eval_rows
from qlora_gsm8k.generation import Generation
from qlora_gsm8k.paired import mcnemar_exact_p
from qlora_gsm8k.report import markdown_report
from qlora_gsm8k.rows import read_json_lines
from qlora_gsm8k.scoring import score_generations

REPO_ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = [
    EvalRow(10, "How many apples? Q10", "10", "5 + 5 = 10\n#### 10"),
    EvalRow(11, "How many pears? Q11", "11", "#### 11"),
    EvalRow(12, "How many plums? Q12", "12", "#### 12"),
    EvalRow(13, "How many figs? Q13", "13", "#### 13"),
    EvalRow(14, "How many kiwis? Q14", "14", "#### 14"),
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
    return generations_table(EXAMPLES, _scored(0), _scored(1), "gsm8k")


def report_of(table, perplexity: dict | None = None, samples: int = 0, **kwargs) -> str:
    """The report of one set, gsm8k, as the compare stage makes it."""
    perplexity = perplexity or {}
    return markdown_report({"gsm8k": (table, set_metrics(table, perplexity), perplexity)}, samples, **kwargs)


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
    examples = [EvalRow(i, f"Question {i}?", str(i)) for i in range(len(texts))]
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
    accuracy = accuracy_plot_rows({"gsm8k": table})

    def bar(model, metric, value):
        return {"set": "gsm8k", "model": model, "metric": f"exact_match_{metric}", "bar": f"gsm8k {model}, {metric}",
                "value": pytest.approx(value)}  # fmt: skip

    assert accuracy.to_dict("records") == [
        bar("base", "flexible", 0.6),
        bar("base", "strict", 0.4),
        bar("tuned", "flexible", 0.6),
        bar("tuned", "strict", 0.6),
    ]
    flips = flips_plot_rows({"gsm8k": table})
    assert flips.to_dict("records") == [
        {"outcome": "gsm8k: wrong_to_right", "questions": 1},
        {"outcome": "gsm8k: right_to_wrong", "questions": 1},
        {"outcome": "gsm8k: both_right", "questions": 2},
        {"outcome": "gsm8k: both_wrong", "questions": 1},
    ]
    # Two sets: one bar per set, model and metric, and each set's four outcomes.
    two = accuracy_plot_rows({"gsm8k": table, "svamp": table})
    assert two["bar"].is_unique and len(two) == 8 and len(flips_plot_rows({"gsm8k": table, "svamp": table})) == 8
    # every bar its own category: nothing stacks (the old plot drew base's 0.3 + 0.25 as one 0.55 bar)
    assert accuracy["bar"].is_unique
    # the CSV dvc plots reads: header with the x/y fields dvc.yaml names
    csv = flips.to_csv(index=False)
    assert csv.splitlines()[0] == "outcome,questions"
    assert pd.read_csv(io.StringIO(csv))["questions"].sum() == len(table)
    assert accuracy.to_csv(index=False).splitlines()[0] == "set,model,metric,bar,value"


def test_flips_plot_rows_lists_every_outcome_even_when_absent():
    same = generations_table(EXAMPLES, _scored(0), _scored(0), "gsm8k")
    assert flips_plot_rows({"gsm8k": same}).to_dict("records") == [
        {"outcome": "gsm8k: wrong_to_right", "questions": 0},
        {"outcome": "gsm8k: right_to_wrong", "questions": 0},
        {"outcome": "gsm8k: both_right", "questions": 3},
        {"outcome": "gsm8k: both_wrong", "questions": 2},
    ]


def _section(report: str, title: str) -> str:
    start = report.index(f"### gsm8k: {title}")
    end = report.find("\n### ", start + 1)
    return report[start : end if end != -1 else len(report)]


def test_markdown_report_flips_sections(table):
    report = report_of(table, PERPLEXITY, samples=2)
    assert report.startswith("# Base vs tuned on the eval sets")
    assert "## gsm8k\n\n5 questions" in report
    assert "1 wrong→right, 1 right→wrong" in report
    w2r = _section(report, "Wrong → right (1)")
    assert "#### gsm8k row 10: reference 10, base 3 (wrong), tuned 10 (right)" in w2r
    assert "How many apples? Q10" in w2r and "I think 3" in w2r and "so\n#### 10" in w2r
    assert "Q11" not in w2r
    r2w = _section(report, "Right → wrong (1)")
    assert "#### gsm8k row 11: reference 11, base 11 (right), tuned 7 (wrong)" in r2w
    assert "Q10" not in r2w
    sample = _section(report, "Sample (2)")
    assert "gsm8k row 10" in sample and "gsm8k row 11" in sample and "gsm8k row 12" not in sample


def test_markdown_report_has_one_section_per_set_with_its_type_table(table):
    typed = generations_table([EvalRow(r.index, r.question, r.number, type="Addition") for r in EXAMPLES],
                              _scored(0), _scored(1), "svamp")  # fmt: skip
    sets = {name: (t, set_metrics(t, {}), {}) for name, t in (("gsm8k", table), ("svamp", typed))}
    report = markdown_report(sets, samples=0)
    assert report.index("## gsm8k") < report.index("## svamp")
    assert "| Addition | 5 | 0.600 | 0.600 | 1 | 1 |" in report.split("## svamp")[1]
    assert "| type |" not in report.split("## svamp")[0]


def test_markdown_report_missing_number_is_not_nan(table):
    report = report_of(table, samples=5)
    assert "#### gsm8k row 13: reference 13, base no number (wrong), tuned 0 (wrong)" in report
    assert "nan" not in report.lower()


def test_markdown_report_no_flips_and_fences(table):
    same = generations_table(EXAMPLES, _scored(0), _scored(0), "gsm8k")
    report = report_of(same)
    assert "### gsm8k: Wrong → right (0)\n\nNone." in report
    assert "### gsm8k: Right → wrong (0)\n\nNone." in report
    # an output holding a code fence cannot break out of its block
    fenced = table.copy()
    fenced.loc[0, "tuned_output"] = "```\n# injected heading\n```"
    report = report_of(fenced)
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
    report = report_of(table, PERPLEXITY, context=run_context(params))
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

    report = report_of(table, PERPLEXITY_4BIT)
    assert "Response perplexity (lower is better): base 12.000 → tuned 4.000 (-8.000)." in report
    assert "| base, 16-bit | 12.000 | |" in report
    assert "| base in 4-bit (training starts here) | 13.000 | +1.000 quantization (4-bit − 16-bit base) |" in report
    assert "| tuned | 4.000 | -9.000 training (tuned − 4-bit base) |" in report
    assert "a tuned model worse than the 16-bit base has still learned if its training change is negative" in report
    original = report_of(table, PERPLEXITY_4BIT, merge_into="original")
    assert "merged into the original 16-bit weights" in original and "still learned" not in original
    older = report_of(table, PERPLEXITY)
    assert "4-bit" not in older


def test_markdown_report_clips_garbage_numbers_and_escapes_control_characters(table):
    garbage = table.copy()
    garbage.loc[0, "tuned_output"] = "noise\x13 and a bare\rreturn " + "7" * 5000
    garbage.loc[0, "tuned_number"] = "8" * 300
    report = report_of(garbage)
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
    """Two enabled sets (gsm8k with perplexity, svamp without) and one that is off (skipped): the files the per-set
    stages write, compared by one compare stage."""
    for name in ("eval", "gen", "ppl"):
        (tmp_path / name).mkdir()
    svamp_rows = [EvalRow(r.index, r.question, r.number, type="Addition") for r in EXAMPLES]
    for name, rows in (("gsm8k", EXAMPLES), ("svamp", svamp_rows)):
        write_eval_rows(rows, tmp_path / "eval" / f"{name}.jsonl")
        for label, which in (("base", 0), ("tuned", 1)):
            (tmp_path / "gen" / f"{name}_{label}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in _scored(which))
            )
            (tmp_path / "ppl" / f"{name}_{label}.json").write_text(json.dumps({name: {}}))
    # The base's file holds the base in 4-bit too, as the evaluate stage writes it.
    gsm8k_base = {"base": PERPLEXITY["base"], "base_4bit": PERPLEXITY_4BIT["base_4bit"]}
    (tmp_path / "ppl" / "gsm8k_base.json").write_text(json.dumps({"gsm8k": gsm8k_base}))
    (tmp_path / "ppl" / "gsm8k_tuned.json").write_text(json.dumps({"gsm8k": {"tuned": PERPLEXITY["tuned"]}}))
    (tmp_path / "params.yaml").write_text(
        "eval:\n  report_samples: 1\neval_sets:\n  gsm8k:\n    layout: gsm8k\n  svamp:\n    layout: svamp\n"
        "  mine:\n    enabled: false\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "stages.compare", "--params", str(tmp_path / "params.yaml"),
        "--eval-dir", str(tmp_path / "eval"), "--generations-dir", str(tmp_path / "gen"),
        "--perplexity-dir", str(tmp_path / "ppl"), "--metrics-out", str(out / "compare.json"),
        "--table-out", str(out / "generations.csv"), "--report-out", str(out / "comparison.md"),
        "--plots-dir", str(out / "plots"), "--adapter-card", str(tmp_path / "adapter_card.md"),
        "--card-out", str(out / "model_card.md"),
    ]  # fmt: skip
    (tmp_path / "adapter_card.md").write_text("# QLoRA adapter\n\nTrained.\n\n## Load\n\nfrom_pretrained\n")
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "compare.json").read_text())
    assert set(metrics) == {"gsm8k", "svamp"}, "the set that is off is skipped"
    assert set(metrics["gsm8k"]["paired"]) == set(metrics["svamp"]["paired"])
    assert metrics["gsm8k"]["paired"]["flips_wrong_to_right"] == 1
    assert metrics["gsm8k"]["delta"]["perplexity"] == pytest.approx(-8.0)
    assert metrics["gsm8k"]["delta"]["training_perplexity"] == pytest.approx(-9.0)
    assert "delta" not in metrics["svamp"] and metrics["svamp"]["by_type"]["Addition"]["examples"] == 5
    csv = pd.read_csv(out / "generations.csv")
    assert csv["set"].tolist() == ["gsm8k"] * 5 + ["svamp"] * 5
    assert csv["index"].tolist()[:5] == [10, 11, 12, 13, 14]
    assert csv["flip"].tolist()[:2] == ["wrong_to_right", "right_to_wrong"]
    report = (out / "comparison.md").read_text()
    assert "### gsm8k: Sample (1)" in report and "| base in 4-bit (training starts here) | 13.000 |" in report
    assert "still learned" in report  # the shipped eval.merge_into (dequantized) reached the report
    assert "## svamp" in report and "## mine" not in report
    # The adapter's card, now with what was measured (the card itself is the train stage's, left as it was).
    card = (out / "model_card.md").read_text()
    assert card.startswith("# QLoRA adapter\n\nTrained.\n\n## Evaluation") and card.endswith(
        "## Load\n\nfrom_pretrained\n"
    )
    assert "| gsm8k exact match, strict-match | 0.400 | 0.600 |" in card
    assert "| svamp exact match, flexible-extract | 0.600 | 0.600 |" in card
    assert "| gsm8k response perplexity (lower is better) | 12 | 4 |" in card
    assert pd.read_csv(out / "plots" / "flips.csv")["questions"].tolist() == [1, 1, 2, 1] * 2
    assert set(pd.read_csv(out / "plots" / "accuracy.csv")["set"]) == {"gsm8k", "svamp"}
    first = {name: (out / "plots" / name).read_bytes() for name in ("accuracy.png", "flips.png", "by_type.png")}
    assert all(data[:8] == b"\x89PNG\r\n\x1a\n" for data in first.values())
    # Same numbers, same bytes: a re-run leaves DVC nothing to see.
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and all((out / "plots" / n).read_bytes() == d for n, d in first.items())


@pytest.mark.parametrize("stage", ["compare", "fetch", "fetch_eval"])
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
