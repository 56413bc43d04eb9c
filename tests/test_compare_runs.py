"""tools/compare_runs.py: is run B better than run A, and a leaderboard against a baseline.

The pure parts (Holm correction, params diff, question matching, the comparison of two runs' files) run without
DVC. The slow tests share one module-scoped tiny project with a baseline commit and four experiments, read
through the real dvc CLI's refs and cache, and check the tool's numbers against a recomputation from the
generation files taken straight out of the cache by the hashes in each experiment's dvc.lock."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, dump_params, dvc, git, imported_modules, make_project, run, tool_env
from qlora_gsm8k.paired import bootstrap_diff_ci
from qlora_gsm8k.runs import (
    Question,
    QuestionsDiffer,
    align_generations,
    compare_generations,
    flatten_params,
    holm_adjusted,
    match_questions,
    params_diff,
    rank_against_baseline,
)
from qlora_gsm8k.synthetic import make_rows, write_svamp_file

sys.path.insert(0, str(REPO_ROOT / "tools"))
import compare_runs  # noqa: E402

TOOL = REPO_ROOT / "tools" / "compare_runs.py"


# --- pure helpers --------------------------------------------------------------------------------------------
def test_holm_multiplies_the_kth_smallest_p_by_m_minus_k_plus_1_and_stays_monotone():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06 (monotone).
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == [1.0, 1.0]
    assert holm_adjusted([0.02]) == [0.02]
    assert holm_adjusted([]) == []


def test_params_diff_names_flattened_keys_that_changed_added_or_went():
    a = {"train": {"learning_rate": 2e-4, "epochs": 1.0}, "lora": {"r": 16, "target_modules": ["q_proj"]}}
    b = {"train": {"learning_rate": 1e-2, "epochs": 1.0}, "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}}
    b["eval_sets"] = {"svamp": {"size": 8}}
    assert params_diff(a, b) == {
        "eval_sets.svamp.size": {"a": None, "b": 8},
        "lora.target_modules": {"a": ["q_proj"], "b": ["q_proj", "v_proj"]},
        "train.learning_rate": {"a": 2e-4, "b": 1e-2},
    }
    assert params_diff(a, a) == {}
    assert flatten_params({"prompt": {"system": None}, "eval.max_new_tokens": 24}) == {
        "prompt.system": None,
        "eval.max_new_tokens": 24,
    }


def _questions(indices, text="Q{}", reference="#### {}"):
    return [Question(i, text.format(i), reference.format(i)) for i in indices]


def test_match_questions_accepts_the_same_rows_in_another_order():
    assert match_questions(_questions([3, 1, 2]), _questions([1, 2, 3])) == [3, 1, 2]


@pytest.mark.parametrize(
    ("b", "message"),
    [
        (_questions([1, 2, 4]), "rows only A answered: 3; rows only B answered: 4"),
        (_questions([1, 2]), "A answered 3, B 2"),
        (_questions([1, 2, 3], text="other {}"), "eval row 1 reads differently"),
        (_questions([1, 2, 3], reference="#### 9{}"), "eval row 1 has another reference answer"),
        (_questions([1, 2, 2, 3]), "B lists eval row 2 twice"),
    ],
)
def test_match_questions_refuses_other_questions_and_says_where(b, message):
    with pytest.raises(QuestionsDiffer, match=message):
        match_questions(_questions([1, 2, 3]), b)


def _row(index, flexible, strict=False, cap=False):
    return {"index": index, "correct_flexible": flexible, "correct_strict": strict, "hit_token_cap": cap}


def test_compare_generations_counts_b_against_a():
    a = [_row(0, True, True), _row(1, False), _row(2, False, cap=True), _row(3, True), _row(4, False)]
    b = [_row(0, True, True), _row(1, True, True), _row(2, True), _row(3, False, cap=True), _row(4, True)]
    result = compare_generations(a, b)
    assert result["n"] == 5
    assert (result["accuracy_a"], result["accuracy_b"]) == (0.4, 0.8)
    assert (result["wrong_to_right"], result["right_to_wrong"]) == (3, 1)
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # two-sided binomial, 1 of 4 discordant
    assert result["accuracy_diff"] == pytest.approx(0.4)
    assert result["ci95"] == list(
        bootstrap_diff_ci([r["correct_flexible"] for r in a], [True, True, True, False, True])
    )
    assert (result["accuracy_strict_a"], result["accuracy_strict_b"]) == (0.2, 0.4)
    assert (result["strict_wrong_to_right"], result["strict_right_to_wrong"]) == (1, 0)
    assert (result["hit_cap_a"], result["hit_cap_b"]) == (0.2, 0.2)


def test_align_generations_puts_a_runs_rows_in_the_matched_order():
    rows = [_row(2, True), _row(0, False), _row(1, True)]
    assert [r["index"] for r in align_generations([0, 1, 2], rows, "B")] == [0, 1, 2]
    with pytest.raises(ValueError, match="missing: 2"):
        align_generations([0, 1, 2], rows[1:], "B")


def test_rank_sorts_by_accuracy_and_marks_only_holm_significant_gains():
    def comparison(accuracy, p):
        return {"accuracy_b": accuracy, "accuracy_diff": accuracy - 0.5, "mcnemar_p": p}

    ranked = rank_against_baseline(
        {"small-gain": comparison(0.55, 0.03), "big-gain": comparison(0.7, 0.001), "worse": comparison(0.3, 0.002)}
    )
    assert [r["run"] for r in ranked] == ["big-gain", "small-gain", "worse"]
    # Holm over 3: 0.001·3 = 0.003, 0.002·2 = 0.004, 0.03·1 = 0.03; "worse" is significant but not better.
    assert [r["holm_p"] for r in ranked] == pytest.approx([0.003, 0.03, 0.004])
    assert [r["better"] for r in ranked] == [True, True, False]
    assert not rank_against_baseline({"lone": comparison(0.6, 0.06)})[0]["better"]


# --- compare() on runs held in memory ------------------------------------------------------------------------
class FilesAtRev:
    """What DVCFileSystem gives compare_runs.Run: exists() and read_text() of a run's files."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def exists(self, path: str) -> bool:
        return path in self.files

    def read_text(self, path: str) -> str:
        return self.files[path]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def run_in_memory(name, correct, *, eval_offset=0, max_new_tokens=24, learning_rate=2e-4) -> compare_runs.Run:
    indices = range(eval_offset, eval_offset + len(correct))
    questions = [{"index": i, "question": f"Q{i}", "number": str(i)} for i in indices]
    generations = [_row(i, c) for i, c in zip(indices, correct, strict=True)]
    cmd = "python -m stages.evaluate --model models/merged --eval data/eval.jsonl --generations-out data/gen.jsonl"
    recorded = {"cmd": cmd, "params": {"params.yaml": {"eval.max_new_tokens": max_new_tokens}}}
    lock = {"stages": {"evaluate_tuned@gsm8k": recorded}}
    params = {"eval_sets": {"gsm8k": {"offset": eval_offset}}, "train": {"learning_rate": learning_rate}}
    files = FilesAtRev({"data/eval.jsonl": _jsonl(questions), "data/gen.jsonl": _jsonl(generations)})
    return compare_runs.Run(name=name, sha=f"{abs(hash(name)):040x}"[:40], params=params, lock=lock, fs=files)


def test_compare_reads_each_runs_files_by_its_recorded_command():
    a = run_in_memory("a", [False, False, True, False])
    b = run_in_memory("b", [True, True, True, False], learning_rate=1e-2)
    result = compare_runs.compare(a, b, compare_runs.EvalSet("gsm8k"))
    assert (result["wrong_to_right"], result["right_to_wrong"], result["n"]) == (2, 0, 4)
    assert result["params_diff"] == {"train.learning_rate": {"a": 2e-4, "b": 1e-2}}


def test_compare_refuses_other_decoding_naming_the_param():
    a, b = run_in_memory("a", [True, False]), run_in_memory("b", [True, True], max_new_tokens=256)
    with pytest.raises(compare_runs.UserError, match="different decoding.*eval.max_new_tokens 24 vs 256"):
        compare_runs.compare(a, b, compare_runs.EvalSet("gsm8k"))


def test_compare_refuses_other_questions_naming_the_slice_params():
    a, b = run_in_memory("a", [True, False]), run_in_memory("b", [True, True], eval_offset=5)
    with pytest.raises(compare_runs.UserError, match="different gsm8k questions.*eval_sets.gsm8k.offset 0 vs 5"):
        compare_runs.compare(a, b, compare_runs.EvalSet("gsm8k"))


# --- the tool on a real project: a baseline commit and four experiments --------------------------------------
# The tiny random-weight model answers nothing right, so one run's answers become the references (below): the
# winner is learning_rate 2e-4, whose barely trained model writes a number for most questions; at the baseline's
# 1e-2 it mostly writes none.
BASELINE_LR, WINNER_LR = 0.01, 0.0002
EVAL_SIZE = 20
WINNER = "lr-2e-4"
COMPARABLE = (WINNER, "lr-5e-2", "r-4")
OTHER_SLICE = "eval-offset-4"
# r-4 trains at the winner's learning rate with half its rank: a close second, and a close call against it.
EXPERIMENTS = {
    WINNER: [f"train.learning_rate={WINNER_LR}"],
    "lr-5e-2": ["train.learning_rate=0.05"],
    "r-4": ["lora.r=4", f"train.learning_rate={WINNER_LR}"],
    OTHER_SLICE: ["eval_sets.gsm8k.offset=4"],
}
PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def experiment_shas(project: Path) -> dict[str, str]:
    """{experiment name: commit}, from git's refs/exps directly (not through DVC or the tool)."""
    listed = git(project, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").stdout.split("\n")
    return {ref.rsplit("/", 1)[1]: sha for ref, sha in (line.split() for line in listed if line.strip())}


def cached_file(project: Path, rev: str, path: str) -> Path:
    """Where the cache holds `path` as `rev`'s dvc.lock recorded it: the file itself, no DVC API in between."""
    lock = yaml.safe_load(git(project, "show", f"{rev}:dvc.lock").stdout)
    (md5,) = {out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"] == path}
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def generations(project: Path, rev: str, path: str = "data/generations/gsm8k_tuned.jsonl") -> list[dict]:
    return [json.loads(line) for line in cached_file(project, rev, path).read_text().splitlines()]


def reset(project: Path) -> None:
    """Back to the committed baseline: `dvc exp run` leaves the experiment's params and outputs in the workspace."""
    git(project, "reset", "-q", "--hard", "HEAD")
    dvc(project, "checkout", "-f")


def point_references_at(data: Path, numbers: dict[int, str]) -> None:
    """Rewrite the test split's final answers at the given rows (eval index = the row's line in test.jsonl)."""
    test = data / "test.jsonl"
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    for index, number in numbers.items():
        rows[index]["answer"] = rows[index]["answer"].rsplit("#### ", 1)[0] + f"#### {number}"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A project whose baseline commit (main) and experiments score differently. A first `dvc repro` with the
    winner's params (not committed) answers the eval questions; the numbers it extracted become their reference
    answers; then the baseline runs with its own learning rate and is committed, and the experiments run on it
    (the winner's training comes back from the run-cache). Experiments: lr-2e-4, lr-5e-2, r-4, eval-offset-4."""
    root = tmp_path_factory.mktemp("compare-runs")
    data = root / "gsm8k"
    data.mkdir()
    for name, count, seed in (("train", 300, 0), ("test", 150, 1)):
        data.joinpath(f"{name}.jsonl").write_text(_jsonl(make_rows(count, seed)))
    write_svamp_file(data / "SVAMP.json", count=120)
    overrides = {"eval_sets": {"gsm8k": {"size": EVAL_SIZE}}, "train": {"learning_rate": WINNER_LR}}
    project = make_project(root, data, overrides)

    dvc(project, "repro")
    answers = [json.loads(line) for line in (project / "data/generations/gsm8k_tuned.jsonl").read_text().splitlines()]
    point_references_at(data, {r["index"]: r["number_flexible"] for r in answers if valid_number(r)})
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["learning_rate"] = BASELINE_LR
    (project / "params.yaml").write_text(dump_params(params))
    # The data source is outside the project: DVC cannot see it change.
    dvc(project, "repro", "-f", "-s", "fetch_eval@gsm8k")
    dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "baseline")
    for name, changes in EXPERIMENTS.items():
        dvc(project, "exp", "run", "-n", name, *(arg for change in changes for arg in ("-S", change)))
        reset(project)
    return project


def valid_number(row: dict) -> bool:
    return row["number_flexible"] is not None and PLAIN_NUMBER.fullmatch(row["number_flexible"]) is not None


def tool(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(TOOL), *args], cwd=project, check=False, env={**tool_env(), **env})


def compared(project: Path, *args: str) -> dict:
    result = tool(project, *args, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def exact_mcnemar(b: int, c: int) -> float:
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def same_numbers(got: dict, expected: dict) -> bool:
    """`got` holds `expected`'s keys with the same values (floats to rounding; approx takes no nested lists)."""
    return all(got[k] == pytest.approx(v) for k, v in expected.items())


def recomputed(project: Path, rev_a: str, rev_b: str, path: str = "data/generations/gsm8k_tuned.jsonl") -> dict:
    a, b = generations(project, rev_a, path), generations(project, rev_b, path)
    assert [r["index"] for r in a] == [r["index"] for r in b]
    right_a, right_b = [r["correct_flexible"] for r in a], [r["correct_flexible"] for r in b]
    w2r = sum(not x and y for x, y in zip(right_a, right_b, strict=True))
    r2w = sum(x and not y for x, y in zip(right_a, right_b, strict=True))
    return {
        "n": len(a),
        "accuracy_a": sum(right_a) / len(a),
        "accuracy_b": sum(right_b) / len(b),
        "accuracy_strict_a": sum(r["correct_strict"] for r in a) / len(a),
        "accuracy_strict_b": sum(r["correct_strict"] for r in b) / len(b),
        "wrong_to_right": w2r,
        "right_to_wrong": r2w,
        "mcnemar_p": exact_mcnemar(w2r, r2w),
        "ci95": list(bootstrap_diff_ci(right_a, right_b)),
        "hit_cap_a": sum(r["hit_token_cap"] for r in a) / len(a),
        "hit_cap_b": sum(r["hit_token_cap"] for r in b) / len(b),
    }


@pytest.mark.slow
def test_two_experiments_compared_equal_a_recomputation_from_their_generation_files(runs):
    shas = experiment_shas(runs)
    result = compared(runs, "r-4", WINNER)
    expected = recomputed(runs, shas["r-4"], shas[WINNER])
    assert same_numbers(result, expected), (result, expected)
    assert result["wrong_to_right"] + result["right_to_wrong"] > 0, "the runs answered alike: nothing was tested"
    assert result["params_diff"] == {"lora.r": {"a": 4, "b": 8}}
    assert (result["a_commit"], result["b_commit"]) == (shas["r-4"], shas[WINNER])

    svamp = compared(runs, "r-4", WINNER, "--set", "svamp")
    expected = recomputed(runs, shas["r-4"], shas[WINNER], "data/generations/svamp_tuned.jsonl")
    assert svamp["set"] == "svamp" and svamp["n"] == 8
    assert same_numbers(svamp, expected), (svamp, expected)

    text = tool(runs, "r-4", WINNER)
    assert text.returncode == 0, text.stderr
    assert f"B = {WINNER} ({shas[WINNER][:7]})" in text.stdout
    assert f"{result['wrong_to_right']} wrong→right, {result['right_to_wrong']} right→wrong" in text.stdout
    assert "lora.r: 4 → 8" in text.stdout


@pytest.mark.slow
def test_runs_are_named_by_branch_tag_commit_or_experiment(runs):
    git(runs, "tag", "-f", "baseline-tag")
    by_name = compared(runs, "main", WINNER)
    by_commit = compared(runs, "baseline-tag", experiment_shas(runs)[WINNER])
    assert by_commit["a_commit"] == git(runs, "rev-parse", "HEAD").stdout.strip()
    numbers = ("accuracy_a", "accuracy_b", "wrong_to_right", "right_to_wrong", "mcnemar_p", "ci95")
    assert {k: by_name[k] for k in numbers} == {k: by_commit[k] for k in numbers}
    assert by_name["params_diff"] == {"train.learning_rate": {"a": BASELINE_LR, "b": WINNER_LR}}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_refuses_runs_that_answered_other_questions(runs):
    error = one_line_error(tool(runs, "main", OTHER_SLICE))
    assert "answered different gsm8k questions" in error and "eval_sets.gsm8k.offset 0 vs 4" in error, error


@pytest.mark.slow
def test_unknown_revision_is_one_line(runs):
    assert "unknown revision 'no-such-run'" in one_line_error(tool(runs, "main", "no-such-run"))
    assert "unknown revision 'no-such-run'" in one_line_error(tool(runs, "--leaderboard", "no-such-run"))


@pytest.mark.slow
def test_an_experiment_whose_outputs_left_the_cache_is_one_line(runs, tmp_path):
    sha = experiment_shas(runs)["r-4"]
    cached = cached_file(runs, sha, "data/generations/gsm8k_tuned.jsonl")
    aside = tmp_path / cached.name
    shutil.move(cached, aside)  # as after `dvc gc -w` while the experiment still exists
    try:
        error = one_line_error(tool(runs, "main", "r-4"))
    finally:
        shutil.move(aside, cached)
    assert "r-4" in error and "data/generations/gsm8k_tuned.jsonl is not in the DVC cache" in error, error


def holm_by_hand(p_values: list[float]) -> list[float]:
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


def png_is_drawn(path: Path) -> bool:
    from matplotlib import image

    pixels = image.imread(path)
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len({tuple(p) for p in pixels.reshape(-1, 4)}) > 10


@pytest.mark.slow
def test_leaderboard_over_three_experiments_ranks_and_marks_them_as_recomputed(runs, tmp_path):
    out = tmp_path / "board"
    board = tool(runs, "--leaderboard", *COMPARABLE, "--baseline", "main", "--out", str(out))
    assert board.returncode == 0, board.stderr[-3000:]
    ranked = compared(runs, "--leaderboard", *COMPARABLE, "--baseline", "main", "--out", str(tmp_path / "json"))

    shas = experiment_shas(runs)
    expected = {name: recomputed(runs, "HEAD", shas[name]) for name in COMPARABLE}
    holm = dict(zip(COMPARABLE, holm_by_hand([expected[n]["mcnemar_p"] for n in COMPARABLE]), strict=True))
    order = sorted(COMPARABLE, key=lambda n: (-expected[n]["accuracy_b"], expected[n]["mcnemar_p"], n))
    assert [row["run"] for row in ranked["runs"]] == order
    for row in ranked["runs"]:
        name = row["run"]
        assert same_numbers(row, expected[name]), (row, expected[name])
        assert row["holm_p"] == pytest.approx(holm[name])
        assert row["better"] == (holm[name] < 0.05 and expected[name]["accuracy_b"] > expected[name]["accuracy_a"])
    assert ranked["runs"][0]["run"] == WINNER and ranked["runs"][0]["better"], ranked["runs"][0]

    markdown = (out / "leaderboard.md").read_text()
    assert markdown in board.stdout
    table = [line for line in markdown.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 3
    for rank, (line, name) in enumerate(zip(table, order, strict=True), start=1):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[:2] == [str(rank), name], line
        assert cells[9] == ("✓" if ranked["runs"][rank - 1]["better"] else ""), line
        assert cells[7] == f"{expected[name]['mcnemar_p']:.3g}", line
    baseline = expected[order[0]]
    assert f"{baseline['accuracy_strict_a']:.1%} strict, {baseline['hit_cap_a']:.1%} at the token cap" in markdown
    assert png_is_drawn(out / "leaderboard.png")


@pytest.mark.slow
def test_leaderboard_defaults_to_heads_experiments_and_leaves_out_the_incomparable(runs, tmp_path):
    board = tool(runs, "--leaderboard", "--out", str(tmp_path))
    assert board.returncode == 0, board.stderr[-3000:]
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "against HEAD" in markdown.splitlines()[0]
    assert all(f"| {name} |" in markdown for name in COMPARABLE), markdown
    left_out = markdown.split("Left out", 1)[1]
    assert f"- {OTHER_SLICE}:" in left_out and "different gsm8k questions" in left_out, markdown
    assert png_is_drawn(tmp_path / "leaderboard.png")


@pytest.mark.slow
def test_the_tool_imports_neither_torch_nor_the_plotting_stack_for_two_runs(runs):
    result = tool(runs, "main", WINNER, PYTHONPROFILEIMPORTTIME="1")
    assert result.returncode == 0, result.stderr[-3000:]
    imported = imported_modules(result.stderr)
    assert "dvc.repo" in imported and "qlora_gsm8k.runs" in imported, "the tool's imports were not seen"
    assert not {"torch", "transformers", "matplotlib"} & imported
