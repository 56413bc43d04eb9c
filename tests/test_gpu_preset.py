"""bench/gpu_preset.sh: the README's full-split preset through `dvc exp run` in a fresh repository, here shrunk to the
tiny model and a few rows (the H200 runs it at full size)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import tool_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_preset_runs_the_preset_through_dvc_exp_run_and_keeps_its_record(tmp_path, dataset_dir):
    out = tmp_path / "out"
    shrink = ["data.train_size=16", "eval_sets.gsm8k.size=4", "eval_sets.svamp.size=4", "train.micro_batch_size=4"]
    result = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_preset.sh"), str(out), "tiny-llama", str(dataset_dir),
         str(dataset_dir / "SVAMP.json"), *[arg for s in shrink + ["eval.max_new_tokens=8"] for arg in ("-S", s)]],
        capture_output=True, text=True, env=tool_env(), timeout=900,
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
    assert json.loads((out / "metrics" / "compare.json").read_text())["svamp"]["paired"]["examples"] == 4
    assert json.loads((out / "metrics" / "train.json").read_text())["train"]["examples"] == 16
    assert "stages" in yaml.safe_load((out / "dvc.lock").read_text())
    assert (out / "comparison.md").read_text().strip() and "torch" in (out / "versions.txt").read_text()
