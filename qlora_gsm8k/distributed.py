"""Multi-GPU training: the train stage relaunches itself with one process per GPU (DDP) on the standard
launchers; rank 0 alone writes artifacts. Multi-node is accelerate's own config, not re-implemented here."""

from __future__ import annotations

import os
import subprocess
import sys

from .errors import UserError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def pin_to_one_gpu() -> None:
    """Keep a single-process run on one GPU of a host with several: otherwise the HF Trainer wraps the model
    in DataParallel over all visible GPUs, which on 2 H200s doubled the batch per step and the logged losses
    (bench/RESULTS.md run 12). Effective before CUDA is initialised, as at the start of the train stage."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0" if visible is None else visible.split(",")[0].strip()


def launch_command(num_processes: int, module: str, argv: list[str]) -> list[str]:
    """`accelerate launch` (DDP over NCCL) on a machine with enough GPUs; without GPUs (CI, laptops) the
    same torchrun launcher accelerate uses underneath, with gloo, so the multi-process path stays tested."""
    import torch  # here, not at import: the train stage starts its weight check and CUDA before torch imports

    if torch.cuda.is_available():
        if torch.cuda.device_count() < num_processes:
            raise UserError(
                f"train.num_gpus={num_processes} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower train.num_gpus or expose more GPUs (CUDA_VISIBLE_DEVICES)"
            )
        # Precision comes from quant.compute_dtype through the Trainer's own bf16/fp16 flags.
        launcher = ["accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no"]
        launcher += ["--dynamo_backend", "no", "--num_processes", str(num_processes)]
    else:
        launcher = ["torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes)]
    return [sys.executable, "-m", *launcher, "-m", module, *argv]


def relaunch(num_processes: int, module: str, argv: list[str]) -> None:
    """Run `python -m module argv` once per process and wait; any failing rank stops them all."""
    env = dict(os.environ, QLORA_GSM8K_LAUNCHED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    result = subprocess.run(launch_command(num_processes, module, argv), env=env)
    if result.returncode != 0:
        raise UserError(
            f"distributed training over {num_processes} processes failed (exit {result.returncode}); "
            "the failing rank's error is printed above, and every rank was stopped"
        )


def launched() -> bool:
    """True inside a process started by `relaunch` (or by any torchrun/accelerate launcher)."""
    return os.environ.get("QLORA_GSM8K_LAUNCHED") == "1" or "LOCAL_RANK" in os.environ
