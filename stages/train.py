"""Train the QLoRA adapter: 4-bit NF4 base, LoRA, HF Trainer, resumable checkpoints, DVCLive curves.

Interrupted (Ctrl-C, SIGTERM, a crash, out of memory)? Run `dvc repro` again: training resumes from the
last complete checkpoint under --checkpoints, which is not a DVC output, so DVC leaves it alone.

train.num_gpus > 1: the stage relaunches itself with one DDP process per GPU; rank 0 alone writes outputs."""

import contextlib
import sys
from pathlib import Path

from qlora_gsm8k import startup
from qlora_gsm8k.cards import write_adapter_card
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.distributed import is_main_process, launched, pin_to_one_gpu, relaunch
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_directory, write_json
from qlora_gsm8k.peft_methods import check_method
from qlora_gsm8k.rows import read_jsonl

RUN_SETTINGS = ("device", "compute_dtype", "liger_kernel", "compile", "cuda_graphs")


@stage_main(resumes=True)
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--adapter-out", required=True)
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--live-dir", required=True, help="DVCLive log directory")
    parser.add_argument("--checkpoints", required=True, help="kept across interrupted runs, for resume")
    startup.report_at_first_work()
    args, params = parse_stage_args(parser, check_method)
    if params.train.num_gpus > 1 and not launched():
        relaunch(params.train.num_gpus, "stages.train", sys.argv[1:])
        return
    if not launched():  # one process: one GPU (under a launcher, each rank has its own already)
        pin_to_one_gpu()
    # The weights hash and CUDA starts while torch, transformers and peft import.
    startup.check_weights_alongside(args.base)
    startup.start_cuda_alongside()
    from qlora_gsm8k.checkpoints import discard_finished_runs
    from qlora_gsm8k.training import train_adapter

    examples = read_jsonl(args.train)
    checkpoints = Path(args.checkpoints)
    main_process = is_main_process()
    # The adapter appears under --adapter-out only once complete (temporary sibling + rename); other ranks
    # train alongside and write nothing.
    output = atomic_directory(args.adapter_out) if main_process else contextlib.nullcontext(None)
    with output as tmp:
        metrics = train_adapter(
            params,
            examples,
            base_dir=Path(args.base),
            adapter_dir=tmp,
            checkpoint_root=checkpoints,
            live_dir=Path(args.live_dir),
            keep_checkpoints=True,
        )
        if main_process:
            write_adapter_card(tmp, args.adapter_out, Path(args.base), params, metrics)
            # How the run was executed (settings, not numbers), kept with the adapter it produced.
            write_json(tmp / "training_run.json", {k: metrics.pop(k) for k in RUN_SETTINGS})
    if not main_process:
        return
    write_json(args.metrics_out, {"train": metrics})
    curves = Path(args.live_dir) / "plots"
    if (curves / "metrics/loss.tsv").is_file():
        from qlora_gsm8k.plots import curve_png  # pandas and matplotlib: at the end, not before training

        curve_png(curves / "metrics/loss.tsv", "loss", curves / "images/loss.png", "Training loss")
    # Only now, with adapter and metrics in place, are the checkpoints of this run no longer needed.
    discard_finished_runs(checkpoints)
    print(f"train loss {metrics['train_loss']:.4f}, {metrics['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    main()
