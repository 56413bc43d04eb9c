"""Bad input gets one clear line, before any model is loaded, and touches nothing.

Every user error (a param of the wrong type or out of range, an unknown key, LoRA target modules the model
lacks, a missing or unreadable data source, malformed JSONL, a row without '#### <answer>', a model that
cannot be found offline, GPU out of memory) makes the stage exit 2 in seconds with exactly one line on
stderr, naming the param, file:line or model and what is allowed, and no traceback. Through `dvc repro`
the check_params stage catches them all before any stage that owns outputs runs, so dvc.lock, metrics/
and the DVC cache are left exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (
    REPO_ROOT,
    TINY_PARAMS,
    dvc,
    git,
    imported_modules,
    local_sources,
    merge_params,
    run,
    shipped_params,
    stages_run,
    tool_env,
    train_stage_outputs,
    train_tiny_adapter,
)
from qlora_gsm8k.errors import USER_ERROR_EXIT_CODE, UserError, UserErrors, eval_oom_message, stage_main
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.train_config import TrainConfig
from qlora_gsm8k.training import train_oom_message

# A user error must be reported in seconds; generous for 2 shared CPU cores importing torch.
FAST_SECONDS = 45


def _params(dataset_dir: Path, overrides: dict | None = None) -> dict:
    params = shipped_params()
    params = merge_params(params, TINY_PARAMS)
    params = merge_params(params, local_sources(dataset_dir))
    return merge_params(params, overrides or {})


def _write_params(tmp_path: Path, dataset_dir: Path, overrides: dict | None = None) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_params(dataset_dir, overrides), sort_keys=False))
    return path


def _stage(name: str, *args: str, cwd: Path = REPO_ROOT, env: dict | None = None):
    start = time.monotonic()
    result = run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, check=False, env=env or tool_env())
    return result, time.monotonic() - start


def assert_one_line_error(result, seconds: float, *expected: str) -> str:
    """Exit 2, exactly one line on stderr, starting 'error: ' and holding every expected piece."""
    output = result.stdout + result.stderr
    assert result.returncode == USER_ERROR_EXIT_CODE, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for piece in expected:
        assert piece in line, f"{piece!r} not in {line!r}"
    assert seconds < FAST_SECONDS, f"took {seconds:.0f}s"
    return line


def _check_params(params_file: Path, tmp_path: Path, env: dict | None = None):
    out = tmp_path / "params_checked.txt"
    result, seconds = _stage("check_params", "--params", str(params_file), "--out", str(out), env=env)
    if result.returncode != 0:
        assert not out.exists(), "the marker must not be written when a check fails"
    return result, seconds


# --- every param: type, range, unknown keys ------------------------------------------------------------------

PARAM_CASES = {
    "int-given-text": ({"lora": {"r": "sixteen"}}, ["lora.r must be int", "'sixteen'"]),
    "float-given-text": ({"train": {"learning_rate": "fast"}}, ["train.learning_rate must be a finite number"]),
    "bool-given-text": ({"train": {"gradient_checkpointing": "yes"}}, ["train.gradient_checkpointing must be bool"]),
    "list-given-text": ({"lora": {"target_modules": "q_proj"}}, ["lora.target_modules must be a list of str"]),
    "choice-not-allowed": ({"quant": {"quant_type": "int3"}}, ["quant.quant_type must be one of 'nf4', 'fp4'"]),
    "lora-r-zero": ({"lora": {"r": 0}}, ["lora.r must be > 0, got 0"]),
    "lora-r-negative": ({"lora": {"r": -8}}, ["lora.r must be > 0, got -8"]),
    "learning-rate-zero": ({"train": {"learning_rate": 0}}, ["train.learning_rate must be > 0"]),
    "learning-rate-negative": ({"train": {"learning_rate": -2e-4}}, ["train.learning_rate must be > 0"]),
    "dropout-one": ({"lora": {"dropout": 1.0}}, ["lora.dropout must be in [0, 1), got 1.0"]),
    "dropout-negative": ({"lora": {"dropout": -0.1}}, ["lora.dropout must be in [0, 1)"]),
    "train-size-zero": ({"data": {"train_size": 0}}, ["data.train_size must be > 0, got 0"]),
    "eval-size-negative": ({"eval_sets": {"gsm8k": {"size": -5}}}, ["eval_sets.gsm8k.size must be > 0, got -5"]),
    "old-svamp-section": ({"svamp": {"size": 5}}, ["svamp moved to eval_sets.svamp", "README: migration"]),
    "micro-batch-zero": ({"train": {"micro_batch_size": 0}}, ["train.micro_batch_size must be > 0"]),
    "eval-batch-zero": ({"eval": {"batch_size": 0}}, ["eval.batch_size must be > 0"]),
    "generation-batch-zero": ({"eval": {"generation_batch_size": 0}}, ["eval.generation_batch_size must be > 0"]),
    "liger-kernel-not-a-choice": (
        {"train": {"liger_kernel": "yes"}},
        ["train.liger_kernel must be bool or one of 'auto', got 'yes'"],
    ),
    # Required, but this machine has no GPU: refused before train deletes its outputs.
    "liger-kernel-required-without-gpu": (
        {"train": {"liger_kernel": True}},
        ["train.liger_kernel is true but needs a CUDA GPU"],
    ),
    "compile-without-gpu": ({"train": {"compile": True}}, ["train.compile is true but needs a CUDA GPU"]),
    "cuda-graphs-without-gpu": (
        {"train": {"cuda_graphs": True}},
        ["train.cuda_graphs is true but it needs a CUDA GPU; set -S train.cuda_graphs=auto"],
    ),
    "cuda-graphs-not-a-choice": (
        {"train": {"cuda_graphs": "on"}},
        ["train.cuda_graphs must be bool or one of 'auto', got 'on'"],
    ),
    "unknown-key": (
        {"lora": {"rank": 8}},
        ["unknown param lora.rank", "allowed lora: r, alpha, dropout, target_modules"],
    ),
    "unknown-section": (
        {"trian": {"epochs": 1}},
        ["unknown param trian", "allowed sections: model, data, prompt, peft, lora"],
    ),
}


@pytest.mark.parametrize("case", sorted(PARAM_CASES))
def test_bad_param_fails_check_params_in_one_line(case, tmp_path, dataset_dir):
    overrides, expected = PARAM_CASES[case]
    result, seconds = _check_params(_write_params(tmp_path, dataset_dir, overrides), tmp_path)
    assert_one_line_error(result, seconds, *expected)


def test_slice_larger_than_split_fails_in_one_line(tmp_path, dataset_dir):
    # The synthetic split has 300 train and 150 test rows.
    for overrides, expected in (
        ({"data": {"train_size": 301}}, "data.train_offset + data.train_size = 301 exceeds the 300 rows"),
        (
            {"eval_sets": {"gsm8k": {"offset": 100, "size": 60}}},
            "eval_sets.gsm8k.offset + eval_sets.gsm8k.size = 160 exceeds the 150",
        ),
    ):
        params_file = _write_params(tmp_path, dataset_dir, overrides)
        result, seconds = _check_params(params_file, tmp_path)
        assert_one_line_error(result, seconds, expected)
        fetch = "fetch" if "data" in overrides else "fetch_eval"
        result, seconds = _stage(fetch, "--params", str(params_file), *_fetch_outs(tmp_path, fetch))
        assert_one_line_error(result, seconds, expected)
        assert not any(tmp_path.glob("*.jsonl")) and not (tmp_path / "source.json").exists()


def _all_stage_commands(project: Path) -> dict[str, list[str]]:
    """Every stage's command line as dvc.yaml runs it (foreach stages with their first item)."""
    commands = {}
    for name, stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items():
        # foreach stages go over eval_sets: the first entry, gsm8k, which is also eval.merge_check_set.
        cmd = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
        commands[name] = cmd.replace("${key}", "gsm8k").replace("${eval.merge_check_set}", "gsm8k").split()
    return commands


@pytest.mark.slow
def test_every_stage_refuses_a_typo_before_doing_anything(project):
    """Whichever stage runs first (dvc repro -s, a stage script by hand), params are validated first."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["lora"]["rank"] = raw["lora"].pop("r")
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def files() -> list[Path]:
        skip = {".git", "__pycache__"}
        return sorted(p.relative_to(project) for p in project.rglob("*") if not skip & set(p.parts))

    before = files()
    for name, cmd in _all_stage_commands(project).items():
        assert cmd[:2] == ["python", "-m"], cmd
        start = time.monotonic()
        result = run([sys.executable, *cmd[1:]], cwd=project, check=False)
        assert_one_line_error(result, time.monotonic() - start, "unknown param lora.rank")
        assert files() == before, f"stage {name} wrote files before failing"


@pytest.mark.slow
def test_a_typo_on_the_command_line_is_refused_and_says_how_to_undo_it(project):
    """README: DVC itself refuses `-S lora.rank=8`; with its suggested `+lora.rank=8` the typo lands in params.yaml,
    and our check names the likely key and says to remove the line again."""
    refused = dvc(project, "exp", "run", "-S", "lora.rank=8", check=False)
    assert refused.returncode != 0 and "Could not override 'lora.rank'" in refused.stdout + refused.stderr
    appended = dvc(project, "exp", "run", "-S", "+lora.rank=8", check=False)
    output = appended.stdout + appended.stderr
    assert appended.returncode != 0
    assert "unknown param lora.rank (did you mean lora.r?)" in output
    assert "remove it from params.yaml" in output
    assert "rank: 8" in (project / "params.yaml").read_text()  # what the README says stays behind


# --- data: missing, unreadable, malformed, no '####' ------------------------------------------------------------


def _fetch_outs(tmp_path: Path, stage: str = "fetch") -> list[str]:
    """The arguments of the stage that reads the train split (fetch) or GSM8K's test split (fetch_eval@gsm8k)."""
    if stage == "fetch":
        return ["--train-out", str(tmp_path / "train.jsonl"), "--source-out", str(tmp_path / "source.json")]
    train = tmp_path / "train-slice" / "train.jsonl"
    train.parent.mkdir(exist_ok=True)
    train.write_text('{"question": "Not in any eval set?", "answer": "#### 1"}\n')
    return ["--set", "gsm8k", "--train", str(train), "--out", str(tmp_path / "eval.jsonl"), "--source-out",
            str(tmp_path / "source.json")]  # fmt: skip


def _corrupt_copy(dataset_dir: Path, dest: Path, split: str, line_no: int, text: str) -> Path:
    shutil.copytree(dataset_dir, dest)
    lines = (dest / f"{split}.jsonl").read_text().splitlines()
    lines[line_no - 1] = text
    (dest / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return dest


def _bad_sources(dataset_dir: Path, root: Path) -> dict[str, tuple[Path, list[str]]]:
    """Data sources that are wrong in one way each, with what the error line must say."""
    missing = root / "no-such-dir"
    no_test = root / "no-test"
    shutil.copytree(dataset_dir, no_test)
    (no_test / "test.jsonl").unlink()
    not_a_file = root / "not-a-file"
    shutil.copytree(dataset_dir, not_a_file)
    (not_a_file / "train.jsonl").unlink()
    (not_a_file / "train.jsonl").mkdir()
    not_utf8 = root / "not-utf8"
    shutil.copytree(dataset_dir, not_utf8)
    (not_utf8 / "train.jsonl").write_bytes(b'{"question": "\xff\xfe", "answer": "#### 1"}\n')
    malformed = _corrupt_copy(dataset_dir, root / "malformed", "train", 3, '{"question": "Ava has", "answer": ')
    no_answer = _corrupt_copy(
        dataset_dir, root / "no-answer", "test", 5, json.dumps({"question": "How many?", "answer": "Seven."})
    )
    not_object = _corrupt_copy(dataset_dir, root / "not-object", "train", 7, "[1, 2]")
    # Notepad's "Unicode": UTF-16 with a byte-order mark, which the JSON reader (ours, and datasets') cannot take.
    utf16 = root / "utf16"
    shutil.copytree(dataset_dir, utf16)
    (utf16 / "test.jsonl").write_bytes((dataset_dir / "test.jsonl").read_text().encode("utf-16"))
    return {
        "missing-dir": (missing, [f"data.source '{missing}': no such local file or directory", "no-test/"]),
        "missing-file": (no_test, [f"data.source '{no_test / 'test.jsonl'}': no such local file or directory"]),
        "unreadable-file": (not_a_file, [f"cannot read {not_a_file / 'train.jsonl'}"]),
        "not-utf8": (not_utf8, [f"{not_utf8 / 'train.jsonl'}:", "not UTF-8 text"]),
        "malformed-jsonl": (malformed, [f"{malformed / 'train.jsonl'}:3: malformed JSON", "an unfinished row"]),
        "no-#### answer": (no_answer, [f"{no_answer / 'test.jsonl'}:5: 'answer' has no '#### <number>' final line"]),
        "not-an-object": (not_object, [f"{not_object / 'train.jsonl'}:7: expected a JSON object"]),
        "utf-16": (utf16, [f"{utf16 / 'test.jsonl'}:1: UTF-16 text", "save it as UTF-8"]),
    }


@pytest.fixture(scope="module")
def bad_sources(dataset_dir, tmp_path_factory):
    return _bad_sources(dataset_dir, tmp_path_factory.mktemp("bad-data"))


BAD_SOURCES = [
    "missing-dir",
    "missing-file",
    "unreadable-file",
    "not-utf8",
    "malformed-jsonl",
    "no-#### answer",
    "not-an-object",
    "utf-16",
]


# The cases whose fault is in the test split: GSM8K's eval set (source null: the training source) reads it.
TEST_SPLIT_CASES = {"missing-file", "no-#### answer", "utf-16"}


@pytest.mark.parametrize("case", BAD_SOURCES)
@pytest.mark.parametrize("stage", ["check_params", "fetch"])
def test_bad_data_source_fails_in_one_line(case, stage, bad_sources, dataset_dir, tmp_path):
    source, expected = bad_sources[case]
    params_file = _write_params(tmp_path, dataset_dir, {"data": {"source": str(source)}})
    if stage == "check_params":
        result, seconds = _check_params(params_file, tmp_path)
    else:
        fetch = "fetch_eval" if case in TEST_SPLIT_CASES else "fetch"
        result, seconds = _stage(fetch, "--params", str(params_file), *_fetch_outs(tmp_path, fetch))
    assert_one_line_error(result, seconds, *expected)
    assert not any(tmp_path.glob("*.jsonl")) and not (tmp_path / "source.json").exists()


def test_train_stage_names_the_bad_line_of_its_input(tmp_path, dataset_dir, tiny_base_dir):
    rows = (dataset_dir / "train.jsonl").read_text().splitlines()[:6]
    rows[4] = '{"question": "x", "answer": "no number here"}'
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    params_file = _write_params(tmp_path, dataset_dir)
    result, seconds = _stage(
        "train",
        "--params",
        str(params_file),
        "--base",
        str(tiny_base_dir),
        "--train",
        str(tmp_path / "train.jsonl"),
        *train_stage_outputs(tmp_path),
    )
    assert_one_line_error(result, seconds, f"{tmp_path / 'train.jsonl'}:5: 'answer' has no '#### <number>'")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train.json").exists()


# --- the model: not found offline, not a model, LoRA targets it lacks ---------------------------------------------


def test_model_not_found_offline_fails_in_one_line_naming_the_fix(tmp_path, dataset_dir):
    params_file = _write_params(tmp_path, dataset_dir, {"model": {"name": "nobody/no-such-model"}})
    expected = [
        "cannot load model 'nobody/no-such-model'",
        "Set model.name to a local model directory",
        "tiny-llama",
    ]
    result, seconds = _check_params(params_file, tmp_path)
    assert_one_line_error(result, seconds, *expected)
    result, seconds = _stage("base", "--params", str(params_file), "--out", str(tmp_path / "base"))
    assert_one_line_error(result, seconds, *expected)
    assert not (tmp_path / "base").exists()


def test_offline_first_run_names_every_unreachable_input_at_once(tmp_path, dataset_dir):
    """The defaults offline: data sets and model on the Hub. One run names all three, one line each, then the one
    command fixing all of them on a line of its own (it was one 1,400-character line)."""
    unreachable = {
        "model": {"name": "nobody/no-such-model"},
        "data": {"source": "nobody/no-such-data"},
        "eval_sets": {"svamp": {"source": "nobody/no-such-svamp"}},
    }
    params_file = _write_params(tmp_path, dataset_dir, unreachable)
    result, seconds = _check_params(params_file, tmp_path)
    assert result.returncode == USER_ERROR_EXIT_CODE and "Traceback" not in result.stderr, result.stderr
    assert seconds < FAST_SECONDS, f"took {seconds:.0f}s"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "error: 3 problems:", result.stderr
    assert "cannot load dataset 'nobody/no-such-data'" in lines[1] and "data.source" in lines[1]
    assert "cannot load dataset 'nobody/no-such-svamp'" in lines[2] and "eval_sets.svamp.source" in lines[2]
    assert "cannot load model 'nobody/no-such-model'" in lines[3] and "model.name" in lines[3]
    assert lines[4].startswith("Offline? Point them at local files"), lines[4]
    assert lines[5] == (
        "  dvc exp run -S data.source=/path/to/gsm8k -S model.name=.models/SmolLM2-135M-Instruct.Q4_1.gguf "
        "-S eval_sets.svamp.source=/path/to/SVAMP.json"
    )
    assert len(lines) == 6, result.stderr
    assert max(map(len, lines)) < 400, "a line per input, not one line for all"


def test_problems_found_together_print_one_line_each(capsys):
    """A problem message that spans lines (library text) still takes one line; the fix lines stay as given."""

    @stage_main
    def fails() -> None:
        raise UserErrors(["first\nproblem", "second"], ["Fix:", "  do this"])

    with pytest.raises(SystemExit) as exit_info:
        fails()
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "error: 2 problems:\n  (1) first problem\n  (2) second\nFix:\n  do this\n"


def test_unreachable_hub_fails_fast_without_offline_mode(tmp_path, dataset_dir):
    """HF_HUB_OFFLINE unset and no network: a probe of the Hub turns a minute of retries into seconds."""
    env = tool_env()
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port: unreachable at once
    params_file = _write_params(tmp_path, dataset_dir, {"model": {"name": "nobody/no-such-model"}})
    result, seconds = _check_params(params_file, tmp_path, env=env)
    assert_one_line_error(result, seconds, "cannot load model 'nobody/no-such-model'")
    assert seconds < 30


@pytest.mark.slow
def test_unreachable_hub_still_serves_a_model_from_the_local_cache(tmp_path, dataset_dir, tiny_base_dir):
    """A Hub id at its pinned revision that is in the Hugging Face cache loads with no network at all."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--someone--cached-model" / "snapshots" / revision
    shutil.copytree(tiny_base_dir, snapshot)
    env = tool_env()
    env.pop("HF_HUB_OFFLINE", None)
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(cache))
    model = {"name": "someone/cached-model", "revision": revision}
    params_file = _write_params(tmp_path, dataset_dir, {"model": model})
    result, _ = _check_params(params_file, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    result, seconds = _stage("base", "--params", str(params_file), "--out", str(tmp_path / "base"), env=env)
    assert result.returncode == 0, result.stderr
    # No network retries on the way (transformers' adapter probe ignores local_files_only: 25 s of backoff);
    # the stage itself takes about 5 s here.
    assert seconds < 20, f"took {seconds:.0f}s"
    assert (tmp_path / "base/model.safetensors").is_file()
    assert json.loads((tmp_path / "base/provenance.json").read_text())["revision"] == revision


@pytest.mark.parametrize("case", ["missing-dir", "no-config", "no-safetensors", "not-safetensors"])
def test_local_model_that_is_not_a_model_fails_in_one_line(case, tmp_path, dataset_dir, tiny_base_dir):
    model_dir = tmp_path / "model"
    if case == "not-safetensors":
        # A pickle renamed to model.safetensors (a UnicodeDecodeError traceback in the base stage before)
        shutil.copytree(tiny_base_dir, model_dir)
        torch.save({"w": torch.zeros(2)}, model_dir / "model.safetensors")
        expected = f"{model_dir / 'model.safetensors'} is not a safetensors file"
    elif case == "missing-dir":
        expected = f"model.name '{model_dir}': no such local file or directory"
    elif case == "no-config":
        model_dir.mkdir()
        expected = f"model.name '{model_dir}' is not a model directory (no config.json)"
    else:
        shutil.copytree(tiny_base_dir, model_dir)
        for weights in model_dir.glob("*.safetensors"):
            weights.unlink()
        expected = f"model.name '{model_dir}' has no *.safetensors weights"
    params_file = _write_params(tmp_path, dataset_dir, {"model": {"name": str(model_dir)}})
    result, seconds = _check_params(params_file, tmp_path)
    assert_one_line_error(result, seconds, expected)
    result, seconds = _stage("base", "--params", str(params_file), "--out", str(tmp_path / "base"))
    assert_one_line_error(result, seconds, expected)


def test_lora_target_modules_missing_from_the_model_fail_in_one_line(tmp_path, dataset_dir):
    params_file = _write_params(tmp_path, dataset_dir, {"lora": {"target_modules": ["q_proj", "query_key_value"]}})
    expected = [
        "lora.target_modules ['query_key_value'] not found in the model",
        "its linear layers are: down_proj, gate_proj, k_proj",
    ]
    # Before the base is materialised and before train deletes its outputs: check_params reads the model's
    # config only (check_params re-runs on any params change, so a new lora.target_modules is checked too).
    result, seconds = _check_params(params_file, tmp_path)
    assert_one_line_error(result, seconds, *expected)


def _imports_torch(result) -> bool:
    """From a run with PYTHONPROFILEIMPORTTIME=1: whether the process imported torch."""
    return "torch" in imported_modules(result.stderr)


@pytest.mark.slow
def test_model_check_runs_again_only_when_what_it_checked_changed(tmp_path, dataset_dir, tiny_base_dir):
    """check_params re-runs on every params change; its model check (torch + transformers, most of its time)
    only when the model or lora.target_modules changed since it last passed."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_base_dir, model_dir)
    record = tmp_path / "model_checked.json"
    env = {**tool_env(), "PYTHONPROFILEIMPORTTIME": "1"}

    def check(overrides: dict):
        params_file = _write_params(tmp_path, dataset_dir, {"model": {"name": str(model_dir)}, **overrides})
        args = ("--params", str(params_file), "--out", str(tmp_path / "ok"), "--model-checked", str(record))
        return _stage("check_params", *args, env=env)[0]

    first = check({})
    assert first.returncode == 0, first.stderr[-3000:]
    assert _imports_torch(first)
    assert json.loads(record.read_text())["key"]["target_modules"] == ["q_proj", "v_proj"]
    other_param = check({"lora": {"r": 4}})
    assert other_param.returncode == 0 and not _imports_torch(other_param), other_param.stderr[-3000:]
    bad_modules = check({"lora": {"r": 4, "target_modules": ["q_proj", "query_key_value"]}})
    assert bad_modules.returncode == USER_ERROR_EXIT_CODE
    assert "lora.target_modules ['query_key_value'] not found in the model" in bad_modules.stderr
    assert json.loads(record.read_text())["key"]["target_modules"] == ["q_proj", "v_proj"], (
        "a failed check records nothing"
    )
    # The local model's config.json changed: checked again.
    (model_dir / "config.json").write_text((model_dir / "config.json").read_text() + "\n")
    changed_model = check({})
    assert changed_model.returncode == 0 and _imports_torch(changed_model)
    record.write_text("{")  # unreadable record: checked again, then rewritten
    unreadable = check({})
    assert unreadable.returncode == 0 and _imports_torch(unreadable)
    assert json.loads(record.read_text())["key"]["name"] == str(model_dir)
    # the context length is kept with the record: a too-long generation is refused without looking again
    too_long = check({"eval": {"max_new_tokens": 100000}})
    assert too_long.returncode == USER_ERROR_EXIT_CODE and not _imports_torch(too_long)
    assert "eval.max_new_tokens=100000" in too_long.stderr and "context of 2048 tokens" in too_long.stderr
    # ... and so are the training rows' token counts: a train.max_length most rows exceed is refused without them
    too_short = check({"train": {"max_length": 16}})
    assert too_short.returncode == USER_ERROR_EXIT_CODE and not _imports_torch(too_short), too_short.stderr[-3000:]
    assert "training rows are longer than train.max_length=16 tokens" in too_short.stderr
    new_rows = check({"data": {"train_size": 40}})
    assert new_rows.returncode == 0 and _imports_torch(new_rows), "other rows: measured again"
    assert len(json.loads(record.read_text())["lengths"]["train_conversation"]) == 40


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"eval": {"max_new_tokens": 100000}}, "eval.max_new_tokens=100000 new tokens on top of the prompt"),
        ({"train": {"max_length": 4096}}, "train.max_length=4096 tokens per training row"),
    ],
)
def test_lengths_beyond_the_models_context_are_refused_up_front(tmp_path, dataset_dir, overrides, expected):
    result, seconds = _check_params(_write_params(tmp_path, dataset_dir, overrides), tmp_path)
    assert_one_line_error(result, seconds, expected, "does not fit the model's context of 2048 tokens")


def test_a_max_length_most_training_rows_exceed_is_refused_up_front(tmp_path, dataset_dir):
    """Known from params + data + tokenizer, so check_params refuses it, not train after DVC deleted the adapter."""
    result, seconds = _check_params(_write_params(tmp_path, dataset_dir, {"train": {"max_length": 16}}), tmp_path)
    line = assert_one_line_error(result, seconds, "training rows are longer than train.max_length=16 tokens")
    longest = int(re.search(r"the longest has (\d+)\)", line).group(1))
    suggested = int(re.search(r"-S train.max_length=(\d+)$", line).group(1))
    assert longest <= suggested < longest + 64
    fits = _check_params(_write_params(tmp_path, dataset_dir, {"train": {"max_length": suggested}}), tmp_path)[0]
    assert fits.returncode == 0 and "left out" not in fits.stdout, fits.stdout + fits.stderr


@pytest.mark.parametrize("dataset", ["gsm8k", "svamp"])
def test_eval_rows_beyond_the_context_are_refused_before_training(dataset, tmp_path, dataset_dir):
    """Eval questions the model cannot attend over were refused by the evaluate stages, i.e. after training:
    check_params refuses them first (the same rule and message as the evaluate stages)."""
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    long = "How many? " + "apples and pears " * 900
    if dataset == "gsm8k":
        rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
        (data / "test.jsonl").write_text("".join(json.dumps({**r, "question": long}) + "\n" for r in rows))
        expected = "(gsm8k: question + reference answer; the longest needs"
    else:
        rows = json.loads((data / "SVAMP.json").read_text())
        (data / "SVAMP.json").write_text(json.dumps([{**r, "Body": long} for r in rows]))
        expected = "(svamp: prompt + eval.max_new_tokens="
    result, seconds = _check_params(_write_params(tmp_path, data), tmp_path)
    assert_one_line_error(result, seconds, "eval rows do not fit the model's context of 2048 tokens", expected)


def test_valid_params_pass_check_params(tmp_path, dataset_dir):
    result, _ = _check_params(_write_params(tmp_path, dataset_dir), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "params_checked.txt").read_text() == "params.yaml is valid\n"


# --- through dvc repro: dvc.lock, metrics/ and the DVC cache untouched ---------------------------------------------


def _tree_digest(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _snapshot(project: Path) -> dict:
    data = _tree_digest(project / "data")
    # check_params' own marker: DVC deletes a stage's outputs before running it, and it is the stage
    # that fails. Constant content, not cached; the next good `dvc repro` writes it again.
    data.pop("params_checked.txt", None)
    return {
        "dvc.lock": (project / "dvc.lock").read_bytes(),
        "metrics": _tree_digest(project / "metrics"),
        "cache": _tree_digest(project / ".dvc" / "cache"),
        "models": _tree_digest(project / "models"),
        "data": data,
    }


@pytest.fixture(scope="module")
def reproduced_copy(reproduced_project, tmp_path_factory):
    """A private clone of the reproduced project, with its DVC cache, checked out."""
    project = tmp_path_factory.mktemp("reproduced-copy") / "project"
    git(reproduced_project.parent, "clone", "-q", str(reproduced_project), str(project))
    git(project, "config", "user.email", "tests@example.com")
    git(project, "config", "user.name", "tests")
    shutil.copytree(reproduced_project / ".dvc" / "cache", project / ".dvc" / "cache")
    dvc(project, "checkout")
    assert dvc(project, "status", "--json").stdout.strip() == "{}"
    return project


def _dvc_cases(dataset_dir: Path, root: Path) -> dict[str, tuple[dict, str]]:
    sources = _bad_sources(dataset_dir, root)
    return {
        "compile-without-gpu": ({"train": {"compile": True}}, "train.compile is true but needs a CUDA GPU"),
        "unknown-key": ({"lora": {"rank": 8}}, "unknown param lora.rank"),
        "out-of-range": ({"train": {"learning_rate": 0}}, "train.learning_rate must be > 0"),
        "wrong-type": ({"eval_sets": {"gsm8k": {"size": "many"}}}, "eval_sets.gsm8k.size must be int"),
        "slice-too-large": ({"data": {"train_size": 301}}, "exceeds the 300 rows"),
        "missing-source": ({"data": {"source": str(sources["missing-dir"][0])}}, "no such local file or directory"),
        "malformed-jsonl": ({"data": {"source": str(sources["malformed-jsonl"][0])}}, "train.jsonl:3: malformed JSON"),
        "no-answer": ({"data": {"source": str(sources["no-#### answer"][0])}}, "test.jsonl:5: 'answer' has no '####"),
        "target-modules": ({"lora": {"target_modules": ["q_proj", "qkv"]}}, "lora.target_modules ['qkv'] not found"),
        "model-offline": ({"model": {"name": "nobody/no-such-model"}}, "cannot load model 'nobody/no-such-model'"),
        "rows-too-long": ({"train": {"max_length": 16}}, "training rows are longer than train.max_length=16 tokens"),
    }


@pytest.mark.slow
def test_dvc_repro_with_bad_input_leaves_lock_metrics_and_cache_untouched(
    reproduced_copy, dataset_dir, tmp_path_factory
):
    project = reproduced_copy
    good_params = (project / "params.yaml").read_text()
    before = _snapshot(project)
    cases = _dvc_cases(dataset_dir, tmp_path_factory.mktemp("dvc-bad-data"))
    for case, (overrides, expected) in cases.items():
        params = merge_params(yaml.safe_load(good_params), overrides)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        start = time.monotonic()
        result = dvc(project, "repro", check=False)
        seconds = time.monotonic() - start
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{case}: dvc repro succeeded\n{output}"
        assert f"error: {expected}" in output or expected in output, f"{case}:\n{output}"
        assert "Traceback" not in output, f"{case}:\n{output}"
        assert stages_run(output) == {"check_params"}, f"{case}: {stages_run(output)}"
        assert seconds < 2 * FAST_SECONDS, f"{case}: {seconds:.0f}s"
        assert _snapshot(project) == before, f"{case}: dvc.lock, metrics/, models/, data/ or the cache changed"
    # Back to good params: only the check re-runs; every result is still current.
    (project / "params.yaml").write_text(good_params)
    result = dvc(project, "repro")
    assert stages_run(result.stdout) == {"check_params"}, result.stdout
    assert _snapshot(project) == before
    assert dvc(project, "status", "--json").stdout.strip() == "{}"


# --- out of GPU memory: a message naming the batch settings to lower ------------------------------------------------


def test_train_oom_message_names_every_batch_setting():
    message = train_oom_message(TrainConfig(micro_batch_size=16, grad_accum=1, max_length=512))
    for setting in (
        "train.micro_batch_size=16",
        "train.grad_accum=1",
        "train.max_length=512",
        "train.gradient_checkpointing=false",
    ):
        assert setting in message
    # a concrete way to keep the effective batch
    assert "-S train.micro_batch_size=8 -S train.grad_accum=2" in message
    assert "effective batch of 16" in message
    assert "\n" not in message
    # nothing left to halve: the other knobs are still named
    small = train_oom_message(TrainConfig(micro_batch_size=1, grad_accum=8, gradient_checkpointing=True))
    assert "raise train.grad_accum" not in small and "train.max_length" in small
    assert "train.gradient_checkpointing=true" in small


def test_oom_outside_training_exits_with_one_line_naming_eval_batch_size(capsys):
    @stage_main
    def evaluate():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(SystemExit) as exit_info:
        evaluate()
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of GPU memory")
    assert "eval.batch_size" in err and eval_oom_message() in err


def test_other_errors_keep_their_traceback():
    @stage_main
    def buggy():
        raise RuntimeError("a bug, not a user error")

    with pytest.raises(RuntimeError, match="a bug"):
        buggy()


@pytest.mark.slow
def test_oom_during_training_becomes_a_user_error(tmp_path, tiny_base_dir, examples):
    """A real torch.OutOfMemoryError raised inside the Trainer's loop (from a callback) reaches the user as
    one UserError naming the batch settings; no adapter appears."""
    from transformers import TrainerCallback

    class OutOfMemoryAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    params = parse_params(
        {"model": {"name": "tiny-llama"}, "lora": {"r": 4}, "train": {"micro_batch_size": 2, "max_length": 256}}
    )
    rows = examples[:8]
    with pytest.raises(UserError) as err:
        train_tiny_adapter(params, rows, tiny_base_dir, tmp_path, callbacks=[OutOfMemoryAtStep2()])
    message = str(err.value)
    assert message.startswith("out of GPU memory while training")
    for setting in ("train.micro_batch_size=2", "train.grad_accum=1", "train.max_length=256"):
        assert setting in message
    assert "train.gradient_checkpointing" in message
    assert not (tmp_path / "adapter").exists()


def test_stage_stops_on_sigint_even_when_started_with_sigint_ignored():
    """`nohup … &` starts processes with SIGINT ignored, and children inherit that: a stage must still stop on
    Ctrl-C / `kill -INT` the way it does in a terminal (exit 130, the resume hint)."""
    import signal as signals

    code = (
        "import time\nfrom qlora_gsm8k.errors import stage_main\n"
        "@stage_main\ndef main():\n    print('ready', flush=True)\n    time.sleep(60)\nmain()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**tool_env(), "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_IGN),
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signals.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert "interrupted" in proc.stderr.read()
    finally:
        proc.kill()


def test_params_edited_while_a_stage_runs_fail_the_stage_and_record_nothing(tmp_path, monkeypatch, capsys):
    """dvc.lock takes params.yaml as it is when the stage ends: an edit mid-run (or a refused `dvc exp run -S`,
    which rewrites the file) would be recorded beside outputs made with the old values."""
    from qlora_gsm8k import errors
    from qlora_gsm8k.cli import parse_stage_args, stage_parser

    params_file = tmp_path / "params.yaml"
    params_file.write_text("lora:\n  r: 8\n")
    monkeypatch.setattr(errors, "_STAGE_END_CHECKS", [])
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(params_file)])
    ran = []

    @stage_main
    def stage() -> None:
        _, params = parse_stage_args(stage_parser("a stage"))
        ran.append(params.lora.r)
        params_file.write_text("lora:\n  r: 4\n")  # what `dvc exp run -S lora.r=4` does to the workspace

    with pytest.raises(SystemExit) as exit_info:
        stage()
    assert ran == [8] and exit_info.value.code == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "changed while this stage ran (lora.r: 8 → 4)" in err and "records nothing" in err

    # Unchanged (or changed and changed back): the stage succeeds.
    monkeypatch.setattr(errors, "_STAGE_END_CHECKS", [])
    params_file.write_text("lora:\n  r: 8\n")

    @stage_main
    def quiet_stage() -> None:
        parse_stage_args(stage_parser("a stage"))

    quiet_stage()


def test_interruption_message_says_what_the_next_run_does(capsys, monkeypatch):
    from qlora_gsm8k import errors

    monkeypatch.setattr(errors, "_STAGE_END_CHECKS", [])
    for resumes, expected in ((False, "to run it from the start"), (True, "training resumes from its last checkpoint")):

        @stage_main(resumes=resumes)
        def stage() -> None:
            raise errors.Terminated()

        with pytest.raises(SystemExit) as exit_info:
            stage()
        assert exit_info.value.code == 143
        err = capsys.readouterr().err
        assert err.startswith("terminated: the stage did not finish") and expected in err, err


def test_eval_rows_that_are_also_train_rows_are_refused_or_counted(tmp_path, dataset_dir):
    """Contamination: an eval slice that holds train rows scores the tuned model on what it was taught."""
    source = tmp_path / "leaky"
    source.mkdir()
    train_lines = (dataset_dir / "train.jsonl").read_text().splitlines()
    (source / "train.jsonl").write_text("\n".join(train_lines) + "\n")
    # 3 of the 12 eval rows are train rows (one with other spacing and case): 25%
    test_lines = (dataset_dir / "test.jsonl").read_text().splitlines()[:9]
    leaked = [json.loads(line) for line in train_lines[:3]]
    leaked[0]["question"] = "  " + leaked[0]["question"].upper().replace(" ", "  ")
    (source / "test.jsonl").write_text("\n".join(test_lines + [json.dumps(r) for r in leaked]) + "\n")
    leaky = {"data": {"source": str(source)}, "eval_sets": {"gsm8k": {"size": 12}}}
    params_file = _write_params(tmp_path, dataset_dir, leaky)
    result, seconds = _check_params(params_file, tmp_path)
    assert_one_line_error(
        result, seconds, "3 of 12 gsm8k questions are also in the train slice", "max_eval_overlap=0.25"
    )

    allowed = _write_params(tmp_path, dataset_dir, merge_params(leaky, {"data": {"max_eval_overlap": 0.25}}))
    out = tmp_path / "fetched"
    result, _ = _stage(
        "fetch", "--params", str(allowed), "--train-out", str(out / "train.jsonl"), "--source-out",
        str(out / "source.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result, _ = _stage(
        "fetch_eval", "--params", str(allowed), "--set", "gsm8k", "--train", str(out / "train.jsonl"), "--out",
        str(out / "gsm8k.jsonl"), "--source-out", str(out / "gsm8k_source.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 of 12 gsm8k questions are in the train slice too" in result.stdout
    assert json.loads((out / "gsm8k_source.json").read_text())["eval_rows_in_train"] == 3


def test_a_corrupt_model_file_is_refused_with_the_repair(tmp_path, tiny_base_dir):
    """Bit rot in a DVC cache object (and in the workspace file hardlinked to it) that DVC, trusting file times,
    does not see: the stage that loads the model does, before scoring corrupt weights."""
    from qlora_gsm8k.io import record_weight_digests

    model_dir = tmp_path / "models" / "merged"
    shutil.copytree(tiny_base_dir, model_dir)
    record_weight_digests(model_dir)
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # 64 bytes of the last tensor zeroed: still a valid safetensors file
    weights.write_bytes(bytes(data))
    (tmp_path / "svamp.jsonl").write_text(
        json.dumps({"index": 0, "question": "1+1?", "number": "2", "type": "Addition"}) + "\n"
    )
    (tmp_path / "params.yaml").write_text("eval:\n  dtype: float32\n  max_new_tokens: 2\n")
    result, seconds = _stage(
        "evaluate", "--params", str(tmp_path / "params.yaml"), "--set", "svamp", "--model", str(model_dir),
        "--label", "tuned", "--eval", str(tmp_path / "svamp.jsonl"), "--generations-out", str(tmp_path / "gen.jsonl"),
        "--metrics-out", str(tmp_path / "m.json"), "--perplexity-out", str(tmp_path / "p.json"),
        "--info-out", str(tmp_path / "i.json"),
    )  # fmt: skip
    assert_one_line_error(
        result, seconds, f"{weights} is not what its stage wrote", f"find .dvc/cache -samefile {weights} -delete",
        "dvc repro -f -s merge",
    )  # fmt: skip
    assert not (tmp_path / "m.json").exists()


def test_a_flipped_byte_is_refused_by_the_check_beside_the_load(tmp_path, tiny_base_dir):
    """The weight check runs in a thread beside the imports and the load (startup.py): one flipped bit still fails
    it, and the load raises instead of returning the model."""
    import torch

    from qlora_gsm8k import startup
    from qlora_gsm8k.errors import UserError
    from qlora_gsm8k.io import record_weight_digests
    from qlora_gsm8k.modeling import load_model

    model_dir = tmp_path / "models" / "base"
    shutil.copytree(tiny_base_dir, model_dir)
    record_weight_digests(model_dir)
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    startup.check_weights_alongside(model_dir)
    with pytest.raises(UserError, match=f"{weights} is not what its stage wrote"):
        load_model(model_dir, dtype=torch.float32)
    with pytest.raises(UserError, match="is not what its stage wrote"):  # started by the load itself
        load_model(model_dir, dtype=torch.float32)


def test_weights_are_hashed_once_per_process_until_they_change(tmp_path, tiny_base_dir, monkeypatch):
    """The merge stage loads the base and the adapter twice each: their files are hashed once, not twice; a file
    written meanwhile is hashed again, and refused."""
    from qlora_gsm8k import io
    from qlora_gsm8k.errors import UserError

    model_dir = tmp_path / "models" / "base"
    shutil.copytree(tiny_base_dir, model_dir)
    io.record_weight_digests(model_dir)
    hashed = []
    real_sha256 = io.file_sha256
    monkeypatch.setattr(io, "file_sha256", lambda path: hashed.append(path) or real_sha256(path))
    io.verify_weight_digests(model_dir)
    io.verify_weight_digests(model_dir)
    assert hashed == [model_dir / "model.safetensors"]
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)
    weights.write_bytes(bytes(data))
    info = weights.stat()
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
    with pytest.raises(UserError, match="is not what its stage wrote"):
        io.verify_weight_digests(model_dir)
    assert len(hashed) == 2


def test_eval_rows_longer_than_the_context_are_refused_before_generating(tmp_path, tiny_base_dir):
    """A 20,000-character question went straight into generation (8x the run time, a 6,552-token prompt against
    a 2,048 context): refused, counted, in seconds."""
    rows = [
        {"index": 0, "question": "How many? " + "apples and pears " * 900, "number": "1", "solution": "#### 1"},
        {"index": 1, "question": "1+1?", "number": "2", "solution": "#### 2"},
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "params.yaml").write_text("eval:\n  dtype: float32\n  max_new_tokens: 4\n  batch_size: 2\n")
    result, seconds = _stage(
        "evaluate", "--params", str(tmp_path / "params.yaml"), "--set", "gsm8k", "--model", str(tiny_base_dir),
        "--label", "base", "--eval", str(tmp_path / "eval.jsonl"), "--perplexity-out", str(tmp_path / "ppl.json"),
        "--generations-out", str(tmp_path / "gen.jsonl"), "--metrics-out", str(tmp_path / "gen.json"),
        "--info-out", str(tmp_path / "info.json"),
    )  # fmt: skip
    # The last line (transformers warns about the long row and loads with a progress bar before it)
    assert result.returncode == USER_ERROR_EXIT_CODE and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 eval rows do not fit the model's context of 2048 tokens"), last
    assert "rows 0 of the slice" in last and seconds < FAST_SECONDS
    assert not (tmp_path / "ppl.json").exists()


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("SafetensorError: Error while serializing: No space left on device (os error 28)"),
    ],
)
def test_disk_full_is_one_line_with_what_to_free(error, capsys, monkeypatch):
    from qlora_gsm8k import errors

    monkeypatch.setattr(errors, "_STAGE_END_CHECKS", [])

    @stage_main
    def stage() -> None:
        raise error

    with pytest.raises(SystemExit) as exit_info:
        stage()
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device") and "dvc gc -w" in err and err.count("\n") == 1
