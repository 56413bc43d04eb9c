"""Merge the adapter into the base (eval.merge_into: its dequantized NF4 weights, or the original 16-bit ones;
never rounded into 4-bit), then check that the merged model behaves like the 4-bit model it was trained as:
KL and top-1 agreement over held-out response tokens. A merge that fails the check is not saved."""

import math
from pathlib import Path

from qlora_gsm8k import startup
from qlora_gsm8k.cards import RL_RECIPE, write_merged_card
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.eval_rows import read_eval_rows, solution_examples
from qlora_gsm8k.io import atomic_directory, read_json, write_json
from qlora_gsm8k.peft_methods import check_method

# The SFT merge's check, recorded beside the RL merge's when RL ran.
SFT_CHECK_KEYS = ("kl_merged_vs_4bit_adapter", "top1_agreement_decided", "decided_tokens")


def trained_adapter(sft_adapter: Path, rl_output: Path | None) -> Path:
    """The adapter to merge: the rl stage's where it trained one (rl.enabled), else the SFT adapter (the rl stage then
    wrote only a marker). Read from the rl stage's output, not from params: this stage re-runs when that output
    changes, and an rl.* edit while RL is off changes nothing here."""
    if rl_output is not None and (rl_output / "adapter_config.json").is_file():
        return rl_output
    return sft_adapter


def merge_and_save(base: Path, adapter: Path, examples, params, out_dir: Path, shown_as: str) -> dict:
    """Merge `adapter`, check it (a failed check raises before anything is saved), save it with its card."""
    from qlora_gsm8k.merging import check_merge, merge_adapter, save_merged

    merged, tokenizer, metrics = merge_adapter(base, adapter, examples, params)
    check_merge(metrics, params)
    save_merged(merged, tokenizer, out_dir, shown_as)
    dtype = str(merged.dtype).removeprefix("torch.")
    # The train and rl stages record it beside the adapter; an adapter trained elsewhere may not say.
    run = adapter / "training_run.json"
    trained_in = read_json(run).get("compute_dtype") if run.is_file() else None
    recipe = adapter / RL_RECIPE
    rl_recipe = read_json(recipe) if recipe.is_file() else None
    write_merged_card(out_dir, shown_as, base, params, metrics, dtype, trained_in, rl_recipe)
    return metrics


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True, help="the SFT adapter (the train stage's output)")
    parser.add_argument("--rl-adapter", help="the rl stage's output: merged instead of --adapter when it holds one")
    parser.add_argument("--eval", required=True, help="held-out rows with worked solutions (eval.merge_check_set)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sft-out", help="inside --out: where the SFT adapter goes merged alone as well, when RL ran")
    parser.add_argument("--metrics-out", required=True)
    startup.report_at_first_work()
    args, params = parse_stage_args(parser, check_method)
    examples = solution_examples(read_eval_rows(args.eval))[: params.eval.merge_check_size]
    sft_adapter = Path(args.adapter)
    adapter = trained_adapter(sft_adapter, Path(args.rl_adapter) if args.rl_adapter else None)
    # The weights hash and CUDA starts while torch, transformers and peft import.
    startup.check_weights_alongside(args.base, adapter)
    startup.start_cuda_alongside()
    from qlora_gsm8k.merging import merge_check_summary

    with atomic_directory(args.out) as tmp:
        metrics = merge_and_save(Path(args.base), adapter, examples, params, tmp, args.out)
        if adapter != sft_adapter and args.sft_out:
            # SFT alone as well, in sft/: the tuned evaluations answer with both, so compare pairs SFT against
            # SFT + RL on the same questions in the same run.
            inside = Path(args.sft_out).relative_to(args.out)
            sft = merge_and_save(Path(args.base), sft_adapter, examples, params, tmp / inside, args.sft_out)
            metrics.update({f"sft_{k}": sft[k] for k in SFT_CHECK_KEYS})
    kl = metrics["kl_merged_vs_4bit_adapter"]
    # `dvc metrics diff` prints 4 decimals, so a KL of 3e-7 reads 0.0 on both sides; its -log10 (6.5) reads, and
    # a change of merge mode or dtype shows as a change of digits. An exact merge (KL 0) is capped at 30.
    metrics["kl_merged_vs_4bit_adapter_neg_log10"] = -math.log10(max(kl, 1e-30))
    # Written once the model is in place: merge.json never describes a model that was not saved.
    write_json(args.metrics_out, {"merge": metrics})
    what = (
        f"merged into the {params.eval.merge_into} base weights"
        if metrics["merged"]
        else f"not merged (peft.method={params.peft.method} learns tokens, not weights): the adapter and its weights"
    )
    print(f"{what}, saved to {args.out}; {merge_check_summary(metrics)}")


if __name__ == "__main__":
    main()
