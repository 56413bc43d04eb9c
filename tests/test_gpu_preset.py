"""bench/gpu_preset.sh, then bench/gpu_rl.sh on its repository: the README's full-split preset through `dvc exp run`
in a fresh repository and GRPO on top of it, here shrunk to the tiny model and a few rows (the GPU runs them at full
size). What a device call brings back is checked as it comes: a few files beside one run.tgz."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import TINY_RL, tool_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def _archived_json(out: Path, name: str) -> dict:
    with tarfile.open(out / "run.tgz") as archive:
        return json.load(archive.extractfile(name))


def _files_brought_back(out: Path) -> set[str]:
    return {path.name for path in out.iterdir()}


def test_gpu_preset_then_gpu_rl_run_through_dvc_exp_run_and_keep_their_record(tmp_path, dataset_dir):
    out = tmp_path / "out"
    env = tool_env() | {"PRESET_WORK": str(tmp_path / "work")}
    shrink = ["data.train_size=16", "eval_sets.gsm8k.size=4", "eval_sets.svamp.size=4", "train.micro_batch_size=4"]
    result = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_preset.sh"), str(out), "tiny-llama", str(dataset_dir),
         str(dataset_dir / "SVAMP.json"), *[arg for s in shrink + ["eval.max_new_tokens=8"] for arg in ("-S", s)]],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "exp_run.log").read_text()
    assert log.startswith("$ dvc exp run -S model.name=tiny-llama") and "rc 0" in log
    params = yaml.safe_load((out / "params.yaml").read_text())
    # The preset's settings, then the shrinking ones over them
    assert params["peft"]["method"] == "rslora" and params["train"]["epochs"] == 3
    svamp = params["eval_sets"]["svamp"]
    assert len(params["lora"]["target_modules"]) == 7 and svamp["enabled"] is True
    assert params["data"]["train_size"] == 16 and svamp["size"] == 4
    assert svamp["source"] == str((dataset_dir / "SVAMP.json").resolve())
    assert _files_brought_back(out) == {
        "exp_run.log", "params.yaml", "dvc.lock", "comparison.md", "versions.txt", "run.tgz",
    }  # fmt: skip
    assert _archived_json(out, "metrics/compare.json")["svamp"]["paired"]["examples"] == 4
    assert _archived_json(out, "metrics/train.json")["train"]["examples"] == 16
    assert "stages" in yaml.safe_load((out / "dvc.lock").read_text())
    assert (out / "comparison.md").read_text().strip() and "torch" in (out / "versions.txt").read_text()

    rl_out = tmp_path / "rl"
    result = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_rl.sh"), str(rl_out), *[arg for s in TINY_RL for arg in ("-S", s)]],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on top of the preset's experiment" in (rl_out / "exp_run.log").read_text()
    assert _files_brought_back(rl_out) == {
        "exp_run.log", "params.yaml", "dvc.lock", "comparison.md", "versions.txt", "run.tgz", "compare_gsm8k.txt",
        "compare_svamp.txt",
    }  # fmt: skip
    assert yaml.safe_load((rl_out / "params.yaml").read_text())["rl"]["enabled"] is True
    assert _archived_json(rl_out, "metrics/rl.json")["rl"]["steps"] == 2
    # The RL run paired against the preset's experiment, question by question
    assert _archived_json(rl_out, "./compare_gsm8k.json")["n"] == 4
    assert _archived_json(rl_out, "./compare_svamp.json")["n"] == 4
    assert "McNemar" in (rl_out / "compare_gsm8k.txt").read_text()
