"""Where one training step's wall time goes, CPU side included: a cProfile of a bench run, cut into the parts of
the HF Trainer's loop, in milliseconds per optimizer step.

    python3 -m cProfile -o ours.prof bench/bench.py --data .bench/gsm8k --tokenizer .bench/tokenizer.model \
        --rows 1600 --no-eval --no-ablations --skip seed-style,lean --out /tmp/run
    python3 bench/step_breakdown.py ours.prof --results /tmp/run/results.json

cProfile slows Python-heavy code more than C++/CUDA (every Python call is hooked), so the Python parts read high;
torch.profiler's GPU kernel time (bench.py --profile-steps N, profile.txt) is the other half of the picture."""

from __future__ import annotations

import argparse
import json
import pstats
from pathlib import Path

# (label, file fragment, function name): cumulative time of these calls, in the order a step runs them.
PARTS = [
    ("whole training step (forward + backward)", "transformers/trainer.py", "training_step"),
    ("  forward and loss", "transformers/trainer.py", "compute_loss"),
    ("    4-bit linear forward (bitsandbytes MatMul4Bit)", "bitsandbytes/autograd/_functions.py", "forward"),
    ("    LoRA wrappers (peft lora.Linear.forward, all of it)", "peft/tuners/lora/bnb.py", "forward"),
    ("  backward (autograd engine, C++ and the kernels it launches)", "torch/autograd/__init__.py", "backward"),
    ("    4-bit linear backward (bitsandbytes)", "bitsandbytes/autograd/_functions.py", "backward"),
    ("gradient-norm clipping (one device sync)", "transformers/trainer.py", "_clip_grad_norm"),
    ("optimizer step (AdamW)", "accelerate/optimizer.py", "step"),
    ("zero_grad", "torch/nn/modules/module.py", "zero_grad"),
    ("FLOP count for total_flos", "transformers/trainer.py", "floating_point_ops"),
    ("next batch (sampler + collator)", "transformers/trainer.py", "get_batch_samples"),
    ("callbacks at step end", "transformers/trainer_callback.py", "on_step_end"),
    ("logging (loss .item() sync, callbacks on_log)", "transformers/trainer.py", "_maybe_log_save_evaluate"),
    ("learning-rate scheduler", "torch/optim/lr_scheduler.py", "step"),
]


def cumulative(stats: pstats.Stats, fragment: str, name: str) -> tuple[float, int]:
    """Cumulative seconds and calls of the functions `name` defined in files whose path holds `fragment`."""
    seconds, calls = 0.0, 0
    for (path, _, function), (_, ncalls, _, cum, _) in stats.stats.items():
        if function == name and fragment in path:
            seconds, calls = seconds + cum, calls + ncalls
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="a cProfile output (.prof) of bench/bench.py")
    parser.add_argument("--results", help="the same run's results.json: its training wall time is the whole")
    args = parser.parse_args()
    stats = pstats.Stats(args.profile)
    _, steps = cumulative(stats, "transformers/trainer.py", "training_step")
    # The run's own clock: cProfile records a function only once it returns, and the loop's frames never do.
    loop = json.loads(Path(args.results).read_text())["train"]["ours"]["seconds"] if args.results else 0.0
    print(
        f"{steps} optimizer steps; training wall time under cProfile {loop:.2f} s = {1000 * loop / steps:.1f} ms/step"
    )
    print("| part | ms/step | share of the step | calls/step |")
    print("|---|---|---|---|")
    for label, fragment, name in PARTS:
        seconds, calls = cumulative(stats, fragment, name)
        if calls:
            share = f"{seconds / loop:.0%}" if loop else "n/a"
            print(f"| {label} | {1000 * seconds / steps:.1f} | {share} | {calls / steps:.0f} |")


if __name__ == "__main__":
    main()
