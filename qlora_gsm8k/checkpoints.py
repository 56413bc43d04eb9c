"""What a training run leaves on disk while it runs: resumable checkpoints and the DVCLive curves.

Checkpoints go to <checkpoint_root>/<run fingerprint>/checkpoint-N, outside every DVC output (DVC deletes a
stage's outputs before it runs). A checkpoint counts only once it carries COMPLETE_MARKER, written after the
Trainer has saved everything; a run killed mid-save resumes from the one before. The fingerprint covers
everything the trajectory depends on (params, tokenized rows, base files, library versions), so a checkpoint
is only ever resumed into the run that wrote it; with the RNG state restored the resumed run ends with the same
adapter, bit for bit on CPU, as an uninterrupted one (tests/test_resume.py)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from importlib import metadata
from pathlib import Path

from .config import Params
from .distributed import is_main_process
from .errors import UserError
from .io import atomic_write_text, verified_or_hashed_sha256
from .params_file import params_as_dict
from .prompts import Encoded

COMPLETE_MARKER = "checkpoint_complete.json"
FINISHED_MARKER = "FINISHED"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_FINGERPRINT_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel")


def fingerprint(
    settings: dict, rows, directories: list[Path], packages: tuple[str, ...] = _FINGERPRINT_PACKAGES
) -> str:
    """What a run's trajectory depends on, hashed: `settings` and `rows` (as JSON), every file of `directories`
    (weights included; digests the weight check just verified are reused) and the versions of `packages`."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(json.dumps(rows).encode())
    for directory in directories:
        for file in sorted(p for p in directory.iterdir() if p.is_file()):
            name = file.name if len(directories) == 1 else f"{directory.name}/{file.name}"
            digest.update(f"{name}:{verified_or_hashed_sha256(file)}".encode())
    for package in packages:
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} missing".encode())
    return digest.hexdigest()[:16]


def run_fingerprint(params: Params, encoded: list[Encoded], base_dir: Path) -> str:
    """Identifies a training run: a checkpoint is only resumed into the run that wrote it.

    Covers what the trajectory depends on: the lora/quant/train params, the tokenized rows in order (so
    a new tokenizer, template or data file gives a new run), every file of the base model (weights
    included) and the versions of the libraries that compute the steps."""
    cfg = params_as_dict(params)
    settings = {k: cfg[k] for k in ("peft", "lora", "quant", "train")}
    return fingerprint(settings, [[e.input_ids, e.labels] for e in encoded], [base_dir])


def close_run(run_dir: Path, keep_checkpoints: bool) -> None:
    """A finished run's checkpoints: deleted, or (keep_checkpoints) only marked finished, for the stage to discard
    (discard_finished_runs) once its outputs are safely in place."""
    if not keep_checkpoints:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif run_dir.is_dir():
        atomic_write_text(run_dir / FINISHED_MARKER, "outputs being written; safe to delete\n")


def timed_training(trainer, resume_from: str | None, out_of_memory: str) -> float:
    """trainer.train(), resumed from `resume_from`, in seconds; out of GPU memory, a UserError saying
    `out_of_memory` (what to change)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory) from None
    return time.perf_counter() - start


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint of a run; incomplete ones (killed mid-save) are deleted."""
    if not run_dir.is_dir():
        return None
    complete = []
    for child in run_dir.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if not match or not child.is_dir():
            continue
        if (child / COMPLETE_MARKER).is_file():
            complete.append((int(match.group(1)), child))
        else:
            shutil.rmtree(child, ignore_errors=True)
    return str(max(complete)[1]) if complete else None


def discard_finished_runs(checkpoint_root: Path) -> None:
    """Remove the checkpoints of runs whose outputs are in place (called by the stage after it wrote them)."""
    if not checkpoint_root.is_dir():
        return
    for run_dir in checkpoint_root.iterdir():
        if (run_dir / FINISHED_MARKER).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)


TRAINING_CURVES = ("loss", "learning_rate", "grad_norm", "epoch")


def training_callbacks(
    live_dir: Path | None, resume_from: str | None, curves: tuple[str, ...] = TRAINING_CURVES
) -> list:
    """Checkpoint completion markers, and DVCLive curves of the logged keys in `curves` under live_dir (a key's '/'
    becomes '_', so each curve is one file)."""
    from transformers import TrainerCallback

    class CheckpointComplete(TrainerCallback):
        """Marks a checkpoint complete once the Trainer has saved all of it, with a copy of the training
        curves so a resumed run continues them (DVC deletes the live dir before re-running the stage)."""

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if live_dir is not None and live_dir.is_dir():
                # copyfile: contents only, never the read-only mode of files DVC linked from its cache.
                shutil.copytree(live_dir, checkpoint / "dvclive", dirs_exist_ok=True, copy_function=shutil.copyfile)
            atomic_write_text(checkpoint / COMPLETE_MARKER, json.dumps({"step": state.global_step}) + "\n")

    callbacks = [CheckpointComplete()]
    # Under DDP every rank runs this; rank 0 alone writes the curves.
    if live_dir is None or not is_main_process():
        return callbacks
    try:
        from dvclive import Live
    except ImportError:
        print("dvclive is not installed: training curves are not logged")
        return callbacks

    saved_curves = Path(resume_from) / "dvclive" if resume_from else None
    if saved_curves is not None and saved_curves.is_dir():
        shutil.rmtree(live_dir, ignore_errors=True)
        shutil.copytree(saved_curves, live_dir, copy_function=shutil.copyfile)

    class LiveCurves(TrainerCallback):
        """DVCLive curves under live_dir only (our dvc.yaml declares the plots), x = optimizer step."""

        def __init__(self):
            # resume=False clears live_dir; resume=True keeps the curves restored from the checkpoint.
            self.live = Live(
                str(live_dir), resume=saved_curves is not None, dvcyaml=False, save_dvc_exp=False, report=None
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Per-step logs only: the end-of-training summary holds timings, which are not curves.
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            self.live.step = state.global_step
            for key in curves:
                if isinstance(logs.get(key), (int, float)):
                    self.live.log_metric(key.replace("/", "_"), logs[key])
            self.live.make_summary()

        def on_train_end(self, args, state, control, **kwargs):
            self.live.end()

    return [LiveCurves(), *callbacks]
