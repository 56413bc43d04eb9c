"""Progress where it is read: a live bar in a terminal; in a log (DVC's captured output, a pipe, a file) a plain line
every 10%, never the carriage-return frames of a bar."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, TINY_PARAMS, shipped_params, tool_env, train_stage_outputs, write_params
from qlora_gsm8k.progress import LineProgress, progress
from qlora_gsm8k.rows import write_jsonl


def test_a_line_every_ten_percent_and_no_carriage_return():
    out = io.StringIO()
    with LineProgress(total=25, desc="generate", unit="question", file=out) as bar:
        for _ in range(25):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == [f"{p}%" for p in (0, 12, 20, 32, 40, 52, 60, 72, 80, 92, 100)]
    assert lines[0].startswith("generate: 0% (0/25 question), 00:00 elapsed")
    assert lines[-1].startswith("generate: 100% (25/25 question)")


def test_batches_and_iterables_print_only_when_another_tenth_is_done():
    out = io.StringIO()
    with LineProgress(total=20, desc="generate", unit="question", file=out) as bar:
        for size in (8, 8, 4):  # batches
            bar.update(size)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["0%", "40%", "80%", "100%"]
    out = io.StringIO()
    assert list(LineProgress(range(3), desc="perplexity", unit="batch", file=out)) == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("perplexity: 100% (3/3 batch)")


def test_without_a_total_one_line_at_the_end():
    out = io.StringIO()
    assert sum(LineProgress((i for i in range(5)), desc="read", unit="row", file=out)) == 10
    assert out.getvalue().splitlines() == [out.getvalue().strip()] and out.getvalue().startswith("read: 5 row, ")


def test_a_resumed_count_starts_where_it_was_and_shows_the_last_loss():
    out = io.StringIO()
    bar = LineProgress(total=10, initial=6, desc="train", unit="step", file=out)
    bar.set_postfix_str("loss 1.25", refresh=False)
    bar.update(4)
    bar.close()
    assert out.getvalue().splitlines()[0].startswith("train: 60% (6/10 step)")
    assert out.getvalue().splitlines()[-1].endswith(", loss 1.25") and "100% (10/10 step)" in out.getvalue()


def test_a_terminal_keeps_the_live_bar(monkeypatch, tmp_path):
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        bar = progress(range(3), desc="generate")
        assert not isinstance(bar, LineProgress)
        assert list(bar) == [0, 1, 2]
    os.close(leader)
    with open(tmp_path / "log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        assert isinstance(progress(range(3), desc="generate"), LineProgress)


@pytest.mark.slow
def test_train_stage_logs_progress_lines_not_bar_frames(tmp_path, tiny_base_dir, examples):
    """The train stage with its output piped, as DVC captures it: the Trainer's steps, and transformers' weight
    loading and saving, as lines; no per-step log dicts either (the Trainer's fallback without its bar)."""
    write_jsonl(examples[:24], tmp_path / "train.jsonl")
    params = write_params(tmp_path / "params.yaml", TINY_PARAMS)  # 24 rows, 8 a step: 3 steps
    assert shipped_params()["train"]["logging_steps"] == 1  # a log dict every step, if any were printed
    # Bytes, not text: text mode would turn every carriage return into a newline before the test saw it.
    result = subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", str(params), "--base", str(tiny_base_dir), "--train",
         str(tmp_path / "train.jsonl"), *train_stage_outputs(tmp_path / "out")],
        cwd=REPO_ROOT, env=tool_env(), capture_output=True, timeout=600,
    )  # fmt: skip
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output[-3000:]
    assert "\r" not in output, output[-2000:]
    lines = [line for line in output.splitlines() if line.startswith("train: ")]
    assert lines[0].startswith("train: 0% (0/3 step)") and lines[-1].startswith("train: 100% (3/3 step)"), output
    assert lines[-1].split(", ")[-1].startswith("loss "), lines[-1]
    assert "{'loss'" not in output and "Loading weights" not in output
