"""The rl stage's bookkeeping when GRPO trains more than once on each sampling pass (rl.updates_per_sample, TRL's
num_iterations): steps are optimizer steps, curves come from the passes, sampling time is shared by the steps."""

from __future__ import annotations

import pytest

from conftest import train_tiny_adapter
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.reinforcement import rl_metrics, train_rl
from qlora_gsm8k.train_config import RLConfig


def _log(step: int, sampled: bool) -> dict:
    entry = {"step": step, "loss": 0.1, "kl": 0.01 * step}
    if sampled:
        entry.update({"reward": 0.1 * step, "rewards/answer/mean": 0.05 * step, "sampling_seconds": 2.0})
    return entry


def test_steps_count_updates_and_curves_count_sampling_passes():
    # Six optimizer steps on three passes (updates_per_sample=2), then the Trainer's closing summary.
    history = [_log(step, sampled=step % 2 == 1) for step in range(1, 7)] + [{"step": 6, "train_loss": 0.1}]
    metrics = rl_metrics(history, RLConfig(updates_per_sample=2), seconds=12.0, resumed_from_step=0)
    assert metrics["steps"] == 6 and metrics["sampling_passes"] == 3
    assert metrics["seconds_per_step"] == pytest.approx(2.0)
    assert metrics["sampling_seconds_per_step"] == pytest.approx(1.0)  # 3 passes x 2 s over 6 steps
    assert metrics["reward_first"] == pytest.approx(0.1) and metrics["reward_last"] == pytest.approx(0.5)


def test_updates_per_sample_below_one_is_refused():
    with pytest.raises(UserError, match="rl.updates_per_sample"):
        RLConfig(updates_per_sample=0).validate()


@pytest.mark.slow
def test_grpo_samples_once_per_two_steps_on_the_tiny_model(tiny_base_dir, examples, tmp_path):
    params = parse_params(
        {
            "model": {"name": "tiny-llama"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "train": {"micro_batch_size": 4, "max_length": 256, "learning_rate": 5e-2, "epochs": 1.0},
            "rl": {"enabled": True, "questions": 8, "steps": 4, "group_size": 2, "questions_per_step": 2,
                   "micro_batch_size": 2, "max_completion_length": 12, "updates_per_sample": 2},
        }
    )  # fmt: skip
    rows = examples[:12]
    train_tiny_adapter(params, rows, tiny_base_dir, tmp_path)
    metrics = train_rl(
        params, rows, tiny_base_dir, tmp_path / "adapter", tmp_path / "rl_adapter", tmp_path / "rl_checkpoints", None
    )
    assert metrics["steps"] == 4
    assert metrics["sampling_passes"] == 2
    assert 0 < metrics["sampling_seconds_per_step"] < metrics["seconds_per_step"]
    assert (tmp_path / "rl_adapter" / "adapter_model.safetensors").exists()
