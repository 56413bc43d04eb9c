"""Nothing lost, nothing half-written.

A train stage killed midway (Ctrl-C, SIGTERM, SIGKILL) resumes on the next `dvc repro` from its last
complete checkpoint and ends with the very same adapter, tensor for tensor, as an uninterrupted run (tiny
model, CPU, same seed); metrics and training curves match too. An interrupted stage leaves no valid-looking
adapter, metrics file or dvc.lock entry: outputs appear only complete (temporary sibling + rename)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import dvc, make_project, run, stages_run, tool_env, train_stage_outputs
from qlora_gsm8k.checkpoints import (
    COMPLETE_MARKER,
    FINISHED_MARKER,
    discard_finished_runs,
    last_checkpoint,
    run_fingerprint,
)
from qlora_gsm8k.io import atomic_directory, atomic_write_text, write_json
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.prompts import encode_examples
from qlora_gsm8k.trainer import mean_logged_loss

# Long enough to kill midway on a fast CPU (64 optimizer steps, a checkpoint every 4), short on a slow one.
RESUME_OVERRIDES = {
    "data": {"train_size": 128},
    "train": {"micro_batch_size": 4, "epochs": 2.0, "save_steps": 4, "logging_steps": 1},
}
TOTAL_STEPS = 64
# Differ between any two runs (timing) or by design (was this run resumed?).
RUN_SPECIFIC_KEYS = {"seconds", "tokens_per_second", "resumed", "resumed_from_step"}
STAGE_ARGS = ["--base", "models/base", "--train", "data/train.jsonl"]


# --- atomic outputs --------------------------------------------------------------------------------------------


def test_atomic_directory_interrupted_keeps_the_old_artifact_and_no_temporary(tmp_path):
    out = tmp_path / "adapter"
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("old")
    for interruption in (RuntimeError("crash"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)), atomic_directory(out) as tmp:
            (tmp / "weights").write_text("half-writ")
            raise interruption
        assert (out / "weights").read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_directory_first_write_interrupted_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "merged") as tmp:
        (tmp / "model.safetensors").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "metrics" / "train.json"
    write_json(out, {"loss": 1.0})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json(out, {"loss": 2.0})
    monkeypatch.undo()
    assert json.loads(out.read_text()) == {"loss": 1.0}
    assert [p.name for p in out.parent.iterdir()] == ["train.json"]


def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next_write(tmp_path):
    (tmp_path / ".adapter.abc123.tmp").mkdir()
    (tmp_path / ".adapter.abc123.tmp" / "adapter_model.safetensors").write_bytes(b"partial")
    (tmp_path / ".train.json.x1.tmp").write_text('{"loss": ')
    (tmp_path / ".other.x1.tmp").write_text("not ours")
    with atomic_directory(tmp_path / "adapter") as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    atomic_write_text(tmp_path / "train.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x1.tmp", "adapter", "train.json"]


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "m.json", "{}")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


# --- checkpoints: only complete ones count; a run is keyed by everything its result depends on -----------------------


def test_last_checkpoint_skips_and_removes_incomplete_ones(tmp_path):
    run_dir = tmp_path / "0123456789abcdef"
    for step, complete in ((4, True), (8, True), (12, False)):
        checkpoint = run_dir / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (checkpoint / COMPLETE_MARKER).write_text("{}")
    (run_dir / "runs").mkdir()  # anything else the Trainer writes is left alone
    assert last_checkpoint(run_dir) == str(run_dir / "checkpoint-8")
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-4", "checkpoint-8", "runs"]
    assert last_checkpoint(tmp_path / "missing") is None


def test_discard_finished_runs_keeps_unfinished_ones(tmp_path):
    (tmp_path / "finished" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "finished" / FINISHED_MARKER).write_text("")
    (tmp_path / "interrupted" / "checkpoint-4").mkdir(parents=True)
    discard_finished_runs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["interrupted"]
    discard_finished_runs(tmp_path / "missing")


def test_mean_logged_loss_weights_each_logging_interval():
    history = [{"loss": 2.0, "step": 2}, {"learning_rate": 1e-4, "step": 2}, {"loss": 4.0, "step": 3}]
    assert mean_logged_loss(history) == pytest.approx((2.0 * 2 + 4.0) / 3)
    assert mean_logged_loss([]) is None


def test_run_fingerprint_tracks_params_rows_and_base(tmp_path, tiny_base_dir, tiny_tokenizer, examples):
    import shutil

    params = parse_params({"model": {"name": "tiny-llama"}})
    encoded, _ = encode_examples(tiny_tokenizer, examples[:6], 256)
    reference = run_fingerprint(params, encoded, tiny_base_dir)
    assert run_fingerprint(params, encoded, tiny_base_dir) == reference
    assert run_fingerprint(parse_params({"train": {"seed": 7}}), encoded, tiny_base_dir) != reference
    assert run_fingerprint(params, encoded[:5], tiny_base_dir) != reference
    # same architecture (config.json), different weights: a different run
    other_base = tmp_path / "base"
    shutil.copytree(tiny_base_dir, other_base)
    weights = other_base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert run_fingerprint(params, encoded, other_base) != reference


# --- kill a real train stage midway; the next dvc repro resumes to the same adapter ---------------------------------


def _checkpoints_done(project: Path) -> list[str]:
    return glob.glob(str(project / "checkpoints" / "*" / "checkpoint-*" / COMPLETE_MARKER))


def _start(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    # Its own session: the signal goes to dvc and the stage together, as Ctrl-C in a terminal does.
    return subprocess.Popen(
        cmd, cwd=cwd, env=env or tool_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill_after_first_checkpoint(proc: subprocess.Popen, project: Path, sig: int) -> int:
    deadline = time.monotonic() + 300
    while not _checkpoints_done(project):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    returncode = proc.wait(timeout=120)
    # DVC dies of SIGTERM at once while the stage process is still unwinding (removing its temporary
    # output): wait for every process of the session to be gone before looking at the workspace.
    deadline = time.monotonic() + 120
    while _session_alive(proc.pid):
        assert time.monotonic() < deadline, "the stage process outlived dvc by 120 s"
        time.sleep(0.05)
    return returncode


def _session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _adapter(path: Path) -> dict:
    return load_file(path / "adapter_model.safetensors")


def _assert_same_adapter(got: Path, want: Path) -> None:
    got_tensors, want_tensors = _adapter(got), _adapter(want)
    assert got_tensors.keys() == want_tensors.keys()
    for key in want_tensors:
        # Bit-identical: same seed, RNG state restored from the checkpoint, same data order.
        assert got_tensors[key].equal(want_tensors[key]), f"{key} differs after resume"


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in RUN_SPECIFIC_KEYS}


@pytest.fixture(scope="module")
def resume_project(tmp_path_factory, dataset_dir):
    """A project whose upstream stages have run, plus a reference: the train stage run uninterrupted."""
    project = make_project(tmp_path_factory.mktemp("resume"), dataset_dir, RESUME_OVERRIDES)
    dvc(project, "repro", "base", "fetch")
    reference = project.parent / "reference"
    run(
        [
            sys.executable,
            "-m",
            "stages.train",
            *STAGE_ARGS,
            *train_stage_outputs(reference),
        ],
        cwd=project,
    )
    metrics = json.loads((reference / "train.json").read_text())["train"]
    assert metrics["resumed"] is False and metrics["steps"] == TOTAL_STEPS
    return project, reference


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_killed_train_stage_resumes_to_the_same_adapter(resume_project, sig):
    project, reference = resume_project
    lock_before = (project / "dvc.lock").read_text()
    log = project.parent / f"killed-{sig.name}.log"
    # -f -s: run the train stage even where an earlier case of this test already completed it.
    proc = _start([str(Path(sys.executable).parent / "dvc"), "repro", "-f", "-s", "train"], project, log)
    returncode = _kill_after_first_checkpoint(proc, project, sig)
    output = log.read_text()
    assert returncode != 0, output

    # Nothing half-written is taken as complete.
    assert not (project / "models" / "adapter").exists(), output
    assert not (project / "metrics" / "train.json").exists(), output
    assert (project / "dvc.lock").read_text() == lock_before, "an interrupted stage must not reach dvc.lock"
    leftovers = list((project / "models").glob(".adapter.*.tmp"))
    if sig == signal.SIGKILL:
        assert "Traceback" not in output  # nothing could run; the next write removes the temporary
    else:
        assert leftovers == [], "an interrupted stage cleans up its temporary output"
        how = "interrupted" if sig == signal.SIGINT else "terminated"
        assert f"{how}: the stage did not finish" in output, output
        assert "Traceback" not in output, output
    assert _checkpoints_done(project), "the checkpoints survive DVC and the kill"

    # Plain `dvc repro` re-runs a stage that never finished; where an earlier case finished it, DVC would
    # restore that result from its cache instead, so force the re-run there.
    finished_before = "train" in yaml.safe_load(lock_before)["stages"]
    result = dvc(project, "repro", *(["-f", "-s"] if finished_before else []), "train")
    output = result.stdout + result.stderr
    assert "train" in stages_run(output)
    assert "resuming training from checkpoints/" in output
    metrics = json.loads((project / "metrics" / "train.json").read_text())["train"]
    assert metrics["resumed"] is True and 4 <= metrics["resumed_from_step"] < TOTAL_STEPS
    assert metrics["steps"] == TOTAL_STEPS

    _assert_same_adapter(project / "models" / "adapter", reference / "adapter")
    assert _comparable(metrics) == _comparable(json.loads((reference / "train.json").read_text())["train"])
    # The curves continue across the interruption: every step once, the same values.
    for curve in ("loss", "learning_rate"):
        tsv = Path("plots") / "metrics" / f"{curve}.tsv"
        resumed_curve = (project / "dvclive" / "train" / tsv).read_text()
        assert resumed_curve == (reference / "live" / tsv).read_text()
        assert len(resumed_curve.splitlines()) == TOTAL_STEPS + 1
    assert not any((project / "checkpoints").iterdir()), "a finished run's checkpoints are discarded"
    assert not list((project / "models").glob(".adapter.*.tmp"))
    assert dvc(project, "status", "train", "--json").stdout.strip() == "{}"


@pytest.mark.slow
def test_changed_params_do_not_resume_a_foreign_checkpoint(resume_project, tmp_path):
    """A checkpoint of a run with other params is never resumed into this one."""
    project, _ = resume_project
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["seed"] = 7
    other_params = tmp_path / "params.yaml"
    other_params.write_text(yaml.safe_dump(raw, sort_keys=False))
    checkpoints = tmp_path / "checkpoints"
    cmd = [
        sys.executable,
        "-m",
        "stages.train",
        "--params",
        str(project / "params.yaml"),
        *STAGE_ARGS,
        *train_stage_outputs(tmp_path, checkpoints),
    ]
    proc = _start(cmd, project, tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not glob.glob(str(checkpoints / "*" / "checkpoint-*" / COMPLETE_MARKER)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    cmd[cmd.index("--params") + 1] = str(other_params)
    result = run(cmd, cwd=project)
    assert "resuming" not in result.stdout + result.stderr
    assert json.loads((tmp_path / "train.json").read_text())["train"]["resumed"] is False
    # the other run's checkpoints stay, for when its params come back
    assert len([p for p in checkpoints.iterdir()]) == 1
