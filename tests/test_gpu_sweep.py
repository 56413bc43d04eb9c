"""bench/gpu_sweep.sh: the README's sweep (queued learning rates, tools/run_queue.py, the leaderboard) in a fresh
repository, here shrunk to the tiny model and a few rows (the lent GPU runs it on SmolLM2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import tool_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_sweep_queues_each_rate_and_ranks_them_against_the_first(tmp_path, dataset_dir):
    out = tmp_path / "out"
    env = {
        **tool_env(),
        "SWEEP_LRS": "1e-2,5e-2",
        "SWEEP_TRAIN_ROWS": "16",
        "SWEEP_EVAL": "4",
        "SWEEP_JOBS": "2",
    }  # both at once, as on the GPU
    result = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_sweep.sh"), str(out), "tiny-llama", str(dataset_dir),
         "-S", "train.micro_batch_size=4", "-S", "eval.max_new_tokens=8"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "sweep.log").read_text()
    assert "lr-1e-2: Success" in log and "lr-5e-2: Success" in log
    assert "sweep: run_queue rc 0" in log
    queued = (out / "queue.txt").read_text()
    assert "== dvc queue logs lr-5e-2" in queued  # what the queue did, kept
    # The base was evaluated once, before the queue: no experiment answers with it again
    assert "Running stage 'evaluate_base@gsm8k'" not in queued and "Running stage 'train'" in queued
    board = (out / "leaderboard" / "leaderboard.md").read_text()
    assert "leaderboard against lr-1e-2" in board and "| lr-5e-2 |" in board and "train.learning_rate=0.05" in board
    assert (out / "leaderboard" / "leaderboard.png").stat().st_size > 1000
    shown = (out / "exp_show.md").read_text()
    assert "[lr-5e-2]" in shown and "[lr-1e-2]" in shown and "0.05" in shown
    # Each experiment's outputs with their hashes, to compare two sweeps byte for byte
    adapters = {}
    for commit in json.loads((out / "exp_show.json").read_text()):
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                adapters[rev["name"]] = rev["data"]["outs"]["models/adapter"]["hash"]
    assert set(adapters) == {"lr-1e-2", "lr-5e-2"} and len(set(adapters.values())) == 2
