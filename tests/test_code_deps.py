"""Only what changed re-runs, for code too: a stage's deps are the package files it imports (tools/stage_deps.py), so
module boundaries decide what an edit re-runs. The table below is what an edit to each file must leave dirty; it is
checked against dvc.yaml's deps (fast), and against the real `dvc status` after touching each file in a reproduced
project (slow)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO_ROOT, dvc, shipped_params

# One stage per entry of eval_sets (the shipped gsm8k and svamp) and model.
SETS = ("gsm8k", "svamp")
FETCH_EVAL = {f"fetch_eval@{name}" for name in SETS}
EVALUATE_BASE = {f"evaluate_base@{name}" for name in SETS}
EVALUATE = EVALUATE_BASE | {f"evaluate_tuned@{name}" for name in SETS}
EVERY_STAGE = {"check_params", "fetch", "base", "train", "rl", "merge", "compare"} | FETCH_EVAL | EVALUATE

# file -> the stages `dvc status` must call changed once that file is edited (and no others).
DIRTY_AFTER_EDIT = {
    # Answer scoring (lm-eval's strict/flexible extraction, exact match): the evaluation stages only (compare reads
    # the scored rows they wrote).
    "qlora_gsm8k/scoring.py": EVALUATE,
    # Greedy generation: what the evaluation stages run; never merge, never RL (which samples through TRL).
    "qlora_gsm8k/generation.py": EVALUATE,
    # How an output is read: the number it answers with, and where a completion is cut. Evaluation scores with them
    # and RL is rewarded by them, so both re-run; nothing else does.
    "qlora_gsm8k/answers.py": EVALUATE | {"rl"},
    "qlora_gsm8k/completions.py": EVALUATE | {"rl"},
    # The RL reward and the GRPO run: the rl stage alone.
    "qlora_gsm8k/rewards.py": {"rl"},
    "qlora_gsm8k/reinforcement.py": {"rl"},
    # The frozen 4-bit base both SFT and RL train on.
    "qlora_gsm8k/frozen_base.py": {"train", "rl"},
    # Perplexity and the evaluation of one set: every evaluation stage.
    "qlora_gsm8k/evaluation.py": EVALUATE,
    # The merge check's logit comparison (perplexity reads logits at the same positions).
    "qlora_gsm8k/logits.py": {"merge"} | EVALUATE,
    "qlora_gsm8k/merging.py": {"merge"},
    # The PEFT method table: what checks, trains, merges or describes an adapter; never fetch, base or the base's
    # evaluation.
    "qlora_gsm8k/peft_methods.py": {"check_params", "train", "rl", "merge", "compare"},
    "qlora_gsm8k/training.py": {"train"},
    # GSM8K as the training source (slices, the overlap check): what reads the source or checks a set against it.
    "qlora_gsm8k/gsm8k.py": {"check_params", "fetch"} | FETCH_EVAL,
    # An eval set fetched: check_params and the set's fetch stage, nothing that runs a model.
    "qlora_gsm8k/eval_sets.py": {"check_params"} | FETCH_EVAL,
    # The one eval row type: what writes, checks or reads eval rows; never fetch, base or train.
    "qlora_gsm8k/eval_rows.py": {"check_params", "merge", "compare"} | FETCH_EVAL | EVALUATE,
    # Start-up timing and the weight check: what loads a model (compare reads the model's source for its report).
    "qlora_gsm8k/startup.py": {"check_params", "base", "train", "merge", "compare", "rl"} | EVALUATE,
    # Rows and their JSON Lines: every stage reads or writes rows.
    "qlora_gsm8k/rows.py": EVERY_STAGE,
}


def _deps_by_file() -> dict[str, set[str]]:
    """file -> the stages (foreach items expanded as DVC names them, stage@key) that list it as a dep."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    found: dict[str, set[str]] = {}
    for name, stage in stages.items():
        items = stage.get("foreach", [])
        if items == "${eval_sets}":
            items = shipped_params()["eval_sets"]
        names = [f"{name}@{key}" for key in items] if "foreach" in stage else [name]
        for dep in stage.get("do", stage)["deps"]:
            found.setdefault(dep, set()).update(names)
    return found


def test_the_table_keeps_the_issue_promises():
    """Issue 28: a scoring edit re-runs only evaluation stages and compare; a PEFT-method-table edit never re-runs
    fetch, base or evaluate@base; a generation edit never re-runs merge. Issue 33: a scoring or generation edit
    never re-runs RL, which is training."""
    assert DIRTY_AFTER_EDIT["qlora_gsm8k/scoring.py"] <= EVALUATE | {"compare"}
    assert "rl" not in DIRTY_AFTER_EDIT["qlora_gsm8k/generation.py"]
    assert not DIRTY_AFTER_EDIT["qlora_gsm8k/peft_methods.py"] & ({"fetch", "base"} | EVALUATE_BASE)
    assert "merge" not in DIRTY_AFTER_EDIT["qlora_gsm8k/generation.py"]


def test_every_stage_in_the_table_exists():
    stages = set().union(*_deps_by_file().values())
    assert stages == EVERY_STAGE


@pytest.mark.parametrize("path", sorted(DIRTY_AFTER_EDIT))
def test_dvc_yaml_deps_match_the_table(path):
    assert _deps_by_file().get(path, set()) == DIRTY_AFTER_EDIT[path]


@pytest.mark.slow
def test_dvc_status_after_touching_each_file_matches_the_table(reproduced_project):
    """Append a comment line to each file in turn in a reproduced project and ask `dvc status` which stages changed;
    nothing runs, and each file is put back before the next."""
    project = reproduced_project
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    dirty = {}
    for path in DIRTY_AFTER_EDIT:
        target = project / path
        original = target.read_bytes()
        try:
            target.write_bytes(original + b"# touched by tests/test_code_deps.py\n")
            dirty[path] = set(json.loads(dvc(project, "status", "--json").stdout))
        finally:
            target.write_bytes(original)
    assert dirty == DIRTY_AFTER_EDIT
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
