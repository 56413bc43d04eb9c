"""SVAMP: reading the published layout, slicing, the off switch, scoring with GSM8K's rules, per-type comparison.
The pipeline through the real `dvc` CLI is in test_pipeline.py (SVAMP on) and test_dvc_workflow.py (scoping, off)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO_ROOT, run, tool_env
from qlora_gsm8k.config import SvampConfig
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.generation import Generation
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.report import svamp_metrics
from qlora_gsm8k.scoring import reference_number, score_generations
from qlora_gsm8k.svamp import load_svamp, parse_svamp, read_svamp_slice, take_svamp_slice, write_svamp_slice
from qlora_gsm8k.synthetic import make_svamp_rows

PUBLISHED_ROW = {
    "ID": "chal-1",
    "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
    "Question": "How much do you have to pay to buy each pack?",
    "Equation": "( 76.0 - 25.0 )",
    "Answer": 51.0,
    "Type": "Subtraction",
}


def test_published_row_becomes_a_gsm8k_style_question_and_answer():
    (row,) = parse_svamp([PUBLISHED_ROW], "SVAMP.json")
    assert row.question == PUBLISHED_ROW["Body"] + " " + PUBLISHED_ROW["Question"]
    assert row.number == "51" and row.type == "Subtraction" and row.id == "chal-1"
    example = row.example()
    assert reference_number(example.answer) == "51" and example.question == row.question


def test_hub_string_answers_and_the_misspelt_type_are_normalised():
    hub = {**PUBLISHED_ROW, "Answer": "145", "Type": "Common-Divison"}
    (row,) = parse_svamp([hub], "ChilleD/SVAMP:test")
    assert row.number == "145" and row.type == "Common-Division"
    (fraction,) = parse_svamp([{**PUBLISHED_ROW, "Answer": 2.5}], "x")
    assert fraction.number == "2.5"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"Answer": "many"}, "'Answer' must be a number"),
        ({"Answer": float("nan")}, "'Answer' must be finite"),
        ({"Question": ""}, "non-empty Question"),
        ({"Type": None}, "must be text"),
    ],
)
def test_bad_rows_are_refused_naming_the_row(change, message):
    rows = [PUBLISHED_ROW, {**PUBLISHED_ROW, **change}]
    with pytest.raises(UserError, match=rf"SVAMP.json row 2: .*{message}"):
        parse_svamp(rows, "SVAMP.json")
    with pytest.raises(UserError, match="row 1: missing Answer"):
        parse_svamp([{k: v for k, v in PUBLISHED_ROW.items() if k != "Answer"}], "SVAMP.json")


def test_local_file_dir_and_jsonl_sources(tmp_path):
    rows = make_svamp_rows(10, seed=3)
    (tmp_path / "SVAMP.json").write_text(json.dumps(rows))
    (tmp_path / "test.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    from_file, provenance = load_svamp(SvampConfig(source=str(tmp_path / "SVAMP.json")))
    assert len(from_file) == 10 and provenance["kind"] == "local"
    assert len(load_svamp(SvampConfig(source=str(tmp_path), split="test"))[0]) == 4
    assert len(load_svamp(SvampConfig(source=str(tmp_path / "rows.jsonl")))[0]) == 6
    with pytest.raises(UserError, match="train.json': no such local file or directory; nearest existing: .*test.json"):
        load_svamp(SvampConfig(source=str(tmp_path), split="train"))


def test_hub_source_offline_names_the_local_fix():
    with pytest.raises(UserError) as err:
        load_svamp(SvampConfig(source="nobody/no-such-svamp"))
    assert "-S svamp.source=/path/to/SVAMP.json" in str(err.value) and "svamp.enabled=false" in str(err.value)


def test_slice_bounds_and_round_trip(tmp_path):
    rows = parse_svamp(make_svamp_rows(10, seed=1), "x")
    chosen = take_svamp_slice(rows, SvampConfig(size=4, offset=6))
    assert [r.index for r in chosen] == [6, 7, 8, 9]
    with pytest.raises(UserError, match="svamp.offset \\+ svamp.size = 11 exceeds the 10 rows"):
        take_svamp_slice(rows, SvampConfig(size=4, offset=7))
    write_svamp_slice(chosen, tmp_path / "s.jsonl")
    assert read_svamp_slice(tmp_path / "s.jsonl") == chosen


@pytest.mark.parametrize("bad", [{"size": 0}, {"offset": -1}, {"split": "dev"}, {"enabled": "yes"}])
def test_svamp_params_are_validated(bad):
    with pytest.raises(UserError, match="svamp."):
        parse_params({"svamp": bad})


def test_per_type_comparison_counts_each_type_and_its_flips():
    rows = parse_svamp(
        [
            {**PUBLISHED_ROW, "Answer": 1, "Type": "Addition"},
            {**PUBLISHED_ROW, "Answer": 2, "Type": "Addition"},
            {**PUBLISHED_ROW, "Answer": 3, "Type": "Subtraction"},
        ],
        "x",
    )
    examples = [r.example() for r in rows]

    def scored(texts):
        generations = [Generation(text=t, new_tokens=3, hit_token_cap=False) for t in texts]
        records, _ = score_generations(examples, generations)
        return records

    base = scored(["#### 1", "#### 0", "#### 3"])
    tuned = scored(["#### 1", "The answer is 2", "#### 9"])
    svamp = svamp_metrics(rows, base, tuned)["svamp"]
    assert svamp["paired"]["examples"] == 3
    assert svamp["paired"]["flips_wrong_to_right"] == 1 and svamp["paired"]["flips_right_to_wrong"] == 1
    addition, subtraction = svamp["by_type"]["Addition"], svamp["by_type"]["Subtraction"]
    assert (addition["examples"], addition["base"], addition["tuned"]) == (2, 0.5, 1.0)
    assert (subtraction["base"], subtraction["tuned"], subtraction["flips_right_to_wrong"]) == (1.0, 0.0, 1)
    assert svamp_metrics([], [], []) == {"svamp": {"paired": {"examples": 0}}}


def test_off_switch_writes_empty_outputs_and_loads_no_model(tmp_path):
    """svamp.enabled false: fetch writes an empty slice and evaluate never touches the (here missing) model."""
    params = tmp_path / "params.yaml"
    params.write_text("svamp:\n  enabled: false\n  source: /nowhere/SVAMP.json\n")

    def stage(name, *args):
        cmd = [sys.executable, "-m", f"stages.{name}", "--params", str(params), *args]
        return run(cmd, cwd=REPO_ROOT, env=tool_env())

    stage("fetch_svamp", "--out", str(tmp_path / "svamp.jsonl"), "--source-out", str(tmp_path / "source.json"))
    assert (tmp_path / "svamp.jsonl").read_text() == ""
    result = stage(
        "evaluate_svamp", "--model", str(tmp_path / "no-model"), "--label", "tuned", "--eval",
        str(tmp_path / "svamp.jsonl"), "--generations-out", str(tmp_path / "gen.jsonl"),
        "--metrics-out", str(tmp_path / "svamp_tuned.json"),
    )  # fmt: skip
    assert "SVAMP is off" in result.stdout
    assert json.loads((tmp_path / "svamp_tuned.json").read_text()) == {"svamp": {"tuned": {"examples": 0}}}
