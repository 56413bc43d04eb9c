"""Evaluation sets as entries of eval_sets: each layout normalised into one row type (gsm8k, svamp, plain), a bad row
refused in one line naming the file and line, sources (file, directory, Hub offline), slices, the off switch,
scoring against the reference number, and the comparison of every set with the same keys. The pipeline through the
real `dvc` CLI is in test_pipeline.py (a third, plain set from params alone) and test_dvc_workflow.py (per-set
scoping, a set off)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO_ROOT, run, tool_env
from qlora_gsm8k.comparison import generations_table, set_metrics
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.eval_config import EvalSetConfig
from qlora_gsm8k.eval_rows import EvalRow, normalise_rows, read_eval_rows, write_eval_rows
from qlora_gsm8k.eval_sets import fetch_eval_set, load_eval_set
from qlora_gsm8k.generation import Generation
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.rows import Example
from qlora_gsm8k.scoring import score_generations
from qlora_gsm8k.synthetic import make_svamp_rows

PUBLISHED_ROW = {
    "ID": "chal-1",
    "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
    "Question": "How much do you have to pay to buy each pack?",
    "Equation": "( 76.0 - 25.0 )",
    "Answer": 51.0,
    "Type": "Subtraction",
}
GSM8K_ROW = {"question": "Ava has 2 apples and buys 1,000 more. How many?", "answer": "2 + 1000 = 1002\n#### 1,002"}


def params_with(sets: dict, **sections) -> object:
    """Params whose eval_sets are `sets` (name -> entry), GSM8K's entry kept for the merge check."""
    return parse_params({"eval_sets": {"gsm8k": {"layout": "gsm8k"}, **sets}, **sections})


# --- one row type, normalised per layout --------------------------------------------------------------------
def test_gsm8k_rows_keep_their_worked_solution_and_store_the_reference_number():
    (row,) = normalise_rows("gsm8k", [GSM8K_ROW], "test.jsonl", [1])
    assert row == EvalRow(index=0, question=GSM8K_ROW["question"], number="1002", solution=GSM8K_ROW["answer"])
    assert row.example() == Example(question=row.question, answer=GSM8K_ROW["answer"], index=0)


def test_svamp_rows_join_body_and_question_and_store_the_number_no_fake_answer_line():
    (row,) = normalise_rows("svamp", [PUBLISHED_ROW], "SVAMP.json")
    assert row.question == PUBLISHED_ROW["Body"] + " " + PUBLISHED_ROW["Question"]
    assert (row.number, row.type, row.solution) == ("51", "Subtraction", None)
    (hub,) = normalise_rows("svamp", [{**PUBLISHED_ROW, "Answer": "145", "Type": "Common-Divison"}], "x")
    assert (hub.number, hub.type) == ("145", "Common-Division")
    with pytest.raises(ValueError, match="no worked solution"):
        row.example()


def test_plain_rows_take_a_numeric_answer_and_an_optional_type():
    rows = [{"question": "2 + 2?", "answer": 4}, {"question": "Half of 5?", "answer": "2.5", "type": "halves"}]
    first, second = normalise_rows("plain", rows, "mine.jsonl", [1, 2])
    assert (first.number, first.type, second.number, second.type) == ("4", None, "2.5", "halves")
    assert normalise_rows("plain", [{"question": "q", "answer": " 1,000 "}], "x")[0].number == "1000"


@pytest.mark.parametrize(
    "layout, good, change, message",
    [
        ("gsm8k", GSM8K_ROW, {"answer": "no final line"}, "'answer' has no '#### <number>' final line"),
        ("svamp", PUBLISHED_ROW, {"Answer": "many"}, "'Answer' must be a number"),
        ("svamp", PUBLISHED_ROW, {"Answer": float("nan")}, "'Answer' must be finite"),
        ("svamp", PUBLISHED_ROW, {"Question": ""}, "non-empty Question"),
        ("plain", {"question": "q", "answer": 1}, {"answer": "2,5"}, "'answer' must be a number"),
        ("plain", {"question": "q", "answer": 1}, {"question": None}, "missing 'question' text"),
        ("plain", {"question": "q", "answer": 1}, {"type": 3}, "'type' must be text"),
    ],
)
def test_a_bad_row_is_one_line_naming_the_file_and_line(tmp_path, layout, good, change, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, **change}) + "\n")
    cfg = EvalSetConfig(layout=layout, source=str(path))
    with pytest.raises(UserError) as err:
        load_eval_set("mine", cfg, params_with({}))
    text = str(err.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text, text


def test_a_plain_row_without_an_answer_names_the_keys_it_has(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q", "solution": 4}) + "\n")
    with pytest.raises(UserError, match=r"rows.jsonl:1: missing 'answer'; its keys: 'question', 'solution'"):
        load_eval_set("mine", EvalSetConfig(layout="plain", source=str(path)), params_with({}))


# --- sources, slices, the off switch --------------------------------------------------------------------------
def test_local_file_dir_and_jsonl_sources(tmp_path):
    rows = make_svamp_rows(10, seed=3)
    (tmp_path / "SVAMP.json").write_text(json.dumps(rows))
    (tmp_path / "test.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    params = params_with({})

    def load(source, split="test"):
        return load_eval_set("svamp", EvalSetConfig(layout="svamp", source=source, split=split), params)

    from_file, provenance = load(str(tmp_path / "SVAMP.json"))
    assert len(from_file) == 10 and provenance["kind"] == "local"
    assert len(load(str(tmp_path))[0]) == 4
    assert len(load(str(tmp_path / "rows.jsonl"))[0]) == 6
    with pytest.raises(UserError, match="train.json': no such local file or directory; nearest existing: .*test.json"):
        load(str(tmp_path), split="train")


def test_a_null_source_reads_the_training_source(dataset_dir):
    params = params_with({}, data={"source": str(dataset_dir)})
    rows, provenance = load_eval_set("gsm8k", params.eval_sets["gsm8k"], params)
    assert provenance["source"] == str(dataset_dir / "test.jsonl") and len(rows) == 150


def test_hub_source_offline_names_the_local_fix_and_the_off_switch():
    cfg = EvalSetConfig(layout="svamp", source="nobody/no-such-svamp", revision="0" * 40)
    with pytest.raises(UserError) as err:
        load_eval_set("svamp", cfg, params_with({}))
    assert "-S eval_sets.svamp.source=/path/to/SVAMP.json" in str(err.value)
    assert "-S eval_sets.svamp.enabled=false" in str(err.value)


def test_slice_bounds_overlap_and_round_trip(tmp_path, dataset_dir, examples):
    sets = {"svamp": {"layout": "svamp", "source": str(dataset_dir / "SVAMP.json"), "size": 4, "offset": 6}}
    chosen, provenance = fetch_eval_set("svamp", params_with(sets), examples[:10])
    assert [r.index for r in chosen] == [6, 7, 8, 9] and provenance["eval_rows_in_train"] == 0
    too_far = {"svamp": {**sets["svamp"], "offset": 117}}
    with pytest.raises(UserError, match=r"eval_sets.svamp.offset \+ eval_sets.svamp.size = 121 exceeds the 120 rows"):
        fetch_eval_set("svamp", params_with(too_far), [])
    write_eval_rows(chosen, tmp_path / "s.jsonl")
    assert read_eval_rows(tmp_path / "s.jsonl") == chosen
    # A set whose questions are in the train slice is refused like GSM8K's held-out slice always was.
    own = {"mine": {"layout": "gsm8k", "source": str(dataset_dir / "train.jsonl"), "size": 5}}
    with pytest.raises(UserError, match="5 of 5 mine questions are also in the train slice"):
        fetch_eval_set("mine", params_with(own, data={"source": str(dataset_dir)}), examples[:10])


def test_a_set_that_is_off_reads_nothing():
    sets = {"svamp": {"layout": "svamp", "source": "/nowhere/SVAMP.json", "enabled": False}}
    assert fetch_eval_set("svamp", params_with(sets), []) == ([], {"kind": "off"})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"svamp": {"size": 0}}, "eval_sets.svamp.size must be > 0"),
        ({"svamp": {"offset": -1}}, "eval_sets.svamp.offset must be >= 0"),
        ({"svamp": {"layout": "csv"}}, "eval_sets.svamp.layout must be one of"),
        ({"svamp": {"enabled": "yes"}}, "eval_sets.svamp.enabled must be bool"),
        ({"svamp": {"sise": 3}}, "unknown param eval_sets.svamp.sise (did you mean eval_sets.svamp.size?)"),
        ({"my-set": {}}, "eval_sets.my-set: a set's name may hold only letters, digits and '_'"),
    ],
)
def test_eval_set_params_are_validated_naming_the_key(bad, message):
    with pytest.raises(UserError) as err:
        parse_params({"eval_sets": {"gsm8k": {"layout": "gsm8k"}, **bad}})
    assert message in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.parametrize(
    "sets, why",
    [
        ({"svamp": {"layout": "svamp"}}, "no such set"),
        ({"gsm8k": {"layout": "gsm8k", "enabled": False}}, "it is off"),
        ({"gsm8k": {"layout": "plain"}}, "its rows have no solutions"),
    ],
)
def test_the_merge_check_needs_an_enabled_set_with_solutions(sets, why):
    with pytest.raises(UserError, match=f"eval.merge_check_set='gsm8k': {why}"):
        parse_params({"eval_sets": sets})


@pytest.mark.parametrize(
    "old, new", [({"svamp": {"size": 5}}, "eval_sets.svamp"), ({"data": {"eval_size": 5}}, "eval_sets.gsm8k.size")]
)
def test_keys_from_before_eval_sets_say_where_they_moved(old, new):
    with pytest.raises(UserError, match=f"moved to {new}"):
        parse_params(old)


# --- scoring and comparison: the same for every set ------------------------------------------------------------
def scored(rows: list[EvalRow], texts: list[str]) -> list[dict]:
    generations = [Generation(text=t, new_tokens=3, hit_token_cap=False) for t in texts]
    return score_generations(rows, generations)[0]


def test_scoring_compares_with_the_reference_number_of_any_layout():
    rows = [
        *normalise_rows("gsm8k", [GSM8K_ROW], "g"),
        *normalise_rows("svamp", [PUBLISHED_ROW], "s"),
        *normalise_rows("plain", [{"question": "q", "answer": 2.5}], "p"),
    ]
    records = scored(rows, ["#### 1,002", "so $51.", "The answer is 2.5"])
    assert [r["correct_flexible"] for r in records] == [True, True, True]
    assert [r["correct_strict"] for r in records] == [True, False, False]


def test_per_type_comparison_counts_each_type_and_its_flips():
    rows = normalise_rows(
        "svamp",
        [
            {**PUBLISHED_ROW, "Answer": 1, "Type": "Addition"},
            {**PUBLISHED_ROW, "Answer": 2, "Type": "Addition"},
            {**PUBLISHED_ROW, "Answer": 3, "Type": "Subtraction"},
        ],
        "x",
    )
    base = scored(rows, ["#### 1", "#### 0", "#### 3"])
    tuned = scored(rows, ["#### 1", "The answer is 2", "#### 9"])
    metrics = set_metrics(generations_table(rows, base, tuned, "svamp"), {})
    assert metrics["paired"]["examples"] == 3
    assert metrics["paired"]["flips_wrong_to_right"] == 1 and metrics["paired"]["flips_right_to_wrong"] == 1
    addition, subtraction = metrics["by_type"]["Addition"], metrics["by_type"]["Subtraction"]
    assert (addition["examples"], addition["base"], addition["tuned"]) == (2, pytest.approx(0.5), pytest.approx(1.0))
    assert (subtraction["base"], subtraction["tuned"], subtraction["flips_right_to_wrong"]) == (1.0, 0.0, 1)


def test_every_set_compares_with_the_same_keys():
    """GSM8K, SVAMP and a plain set compared: the same paired keys; by_type only where rows have types, delta only
    where perplexity was measured."""
    sets = {
        "gsm8k": normalise_rows("gsm8k", [GSM8K_ROW, {**GSM8K_ROW, "answer": "#### 7"}], "g"),
        "svamp": normalise_rows("svamp", [PUBLISHED_ROW, {**PUBLISHED_ROW, "Answer": 3}], "s"),
        "mine": normalise_rows("plain", [{"question": "q", "answer": 1}, {"question": "r", "answer": 2}], "p"),
    }
    compared = {}
    for name, rows in sets.items():
        base, tuned = scored(rows, ["0", "0"]), scored(rows, [rows[0].number, "0"])
        compared[name] = set_metrics(generations_table(rows, base, tuned, name), {})
    keys = {name: set(metrics["paired"]) for name, metrics in compared.items()}
    assert keys["gsm8k"] == keys["svamp"] == keys["mine"]
    assert all(m["paired"]["flips_wrong_to_right"] == 1 for m in compared.values())
    assert set(compared["svamp"]) == {"paired", "by_type"} and set(compared["mine"]) == {"paired"}


def test_off_switch_writes_empty_outputs_and_loads_no_model(tmp_path):
    """A set that is off: fetch_eval writes an empty slice and evaluate never touches the (here missing) model."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "eval_sets:\n  gsm8k:\n    layout: gsm8k\n  svamp:\n    layout: svamp\n    enabled: false\n"
        "    source: /nowhere/SVAMP.json\n"
    )
    (tmp_path / "train.jsonl").write_text(json.dumps(GSM8K_ROW) + "\n")

    def stage(name, *args):
        cmd = [sys.executable, "-m", f"stages.{name}", "--params", str(params), *args]
        return run(cmd, cwd=REPO_ROOT, env=tool_env())

    stage("fetch_eval", "--set", "svamp", "--train", str(tmp_path / "train.jsonl"), "--out",
          str(tmp_path / "svamp.jsonl"), "--source-out", str(tmp_path / "source.json"))  # fmt: skip
    assert (tmp_path / "svamp.jsonl").read_text() == ""
    result = stage(
        "evaluate", "--set", "svamp", "--model", str(tmp_path / "no-model"), "--label", "tuned", "--eval",
        str(tmp_path / "svamp.jsonl"), "--generations-out", str(tmp_path / "gen.jsonl"),
        "--metrics-out", str(tmp_path / "svamp_tuned.json"), "--perplexity-out", str(tmp_path / "ppl.json"),
        "--info-out", str(tmp_path / "info.json"),
    )  # fmt: skip
    assert "svamp is off" in result.stdout and "import" not in result.stdout
    assert json.loads((tmp_path / "svamp_tuned.json").read_text()) == {"svamp": {"tuned": {"examples": 0}}}
    assert json.loads((tmp_path / "ppl.json").read_text()) == {"svamp": {}}
