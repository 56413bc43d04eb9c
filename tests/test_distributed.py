"""Multi-process training through the train stage's own launch path: 2 CPU processes, DDP over gloo, on the
tiny model. The GPU path is the same code launched by `accelerate launch --multi_gpu` with NCCL."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

from conftest import REPO_ROOT, run, shipped_params, tool_env, train_stage_outputs
from qlora_gsm8k.distributed import launch_command, pin_to_one_gpu
from qlora_gsm8k.rows import read_jsonl, write_jsonl


def _train(tmp_path, base_dir, train_file, name: str, **train) -> tuple[object, dict | None]:
    params = shipped_params()
    params["model"]["name"] = "tiny-llama"
    params["train"].update({"micro_batch_size": 8, "learning_rate": 0.01, "save_steps": 100, **train})
    params_file = tmp_path / f"{name}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / name
    result = run(
        [sys.executable, "-m", "stages.train", "--params", str(params_file), "--base", str(base_dir)]
        + ["--train", str(train_file), *train_stage_outputs(out, tmp_path / "checkpoints")],
        cwd=REPO_ROOT,
        env=tool_env(),
        check=False,
    )
    metrics = json.loads((out / "train.json").read_text())["train"] if (out / "train.json").exists() else None
    return result, metrics


def _losses(live_dir) -> list[float]:
    rows = (live_dir / "plots/metrics/loss.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


@pytest.mark.parametrize(("visible", "pinned"), [(None, "0"), ("2,3", "2"), (" 1 , 0", "1"), ("", "")])
def test_single_process_training_is_pinned_to_one_gpu(monkeypatch, visible, pinned):
    """One process on a several-GPU host would otherwise run the Trainer's DataParallel over all of them."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    pin_to_one_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == pinned


def test_launcher_on_a_machine_without_gpus_is_torchrun():
    cmd = launch_command(2, "stages.train", ["--params", "p.yaml"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    assert cmd[5] == "2" and cmd[6:] == ["-m", "stages.train", "--params", "p.yaml"]


@pytest.mark.slow
def test_two_processes_match_one_at_equal_effective_batch(tmp_path, tiny_base_dir, dataset_dir):
    train_file = tmp_path / "train.jsonl"
    write_jsonl(read_jsonl(dataset_dir / "train.jsonl")[:64], train_file)
    single, one = _train(tmp_path, tiny_base_dir, train_file, "one", grad_accum=2, num_gpus=1)
    assert single.returncode == 0, single.stderr[-2000:]
    double, two = _train(tmp_path, tiny_base_dir, train_file, "two", grad_accum=1, num_gpus=2)
    assert double.returncode == 0, double.stderr[-2000:]

    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["effective_batch"] == two["effective_batch"] == 16
    assert one["steps"] == two["steps"] == 4
    # Rank 0 alone wrote: one adapter, one metrics file, one set of curves, no stray temporaries.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["adapter", "live", "train.json"]
    assert (tmp_path / "two/adapter/adapter_model.safetensors").is_file()
    curve_one, curve_two = _losses(tmp_path / "one/live"), _losses(tmp_path / "two/live")
    assert len(curve_one) == len(curve_two) == 4
    # The loss moves (lr 1e-2), and the two curves agree step by step: same rows per optimizer step.
    assert curve_one[0] - curve_one[-1] > 0.05
    for a, b in zip(curve_one, curve_two, strict=True):
        assert abs(a - b) / a < 0.005, (curve_one, curve_two)


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_with_one_clear_line(tmp_path, tiny_base_dir, dataset_dir):
    train_file = tmp_path / "train.jsonl"
    write_jsonl(read_jsonl(dataset_dir / "train.jsonl")[:16], train_file)
    # Every row is longer than 20 tokens: each rank raises the same user error.
    result, metrics = _train(tmp_path, tiny_base_dir, train_file, "bad", num_gpus=2, max_length=20)
    assert result.returncode == 2
    assert metrics is None and not (tmp_path / "bad/adapter").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any("train.max_length=20" in line for line in errors)
    assert errors[-1].startswith("error: distributed training over 2 processes failed")
