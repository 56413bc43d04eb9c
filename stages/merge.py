"""Merge the adapter into the base (eval.merge_into: its dequantized NF4 weights, or the original 16-bit ones;
never rounded into 4-bit), then check that the merged model behaves like the 4-bit model it was trained as:
KL and top-1 agreement over held-out response tokens. A merge that fails the check is not saved."""

import math
from pathlib import Path

from qlora_gsm8k import startup
from qlora_gsm8k.cards import write_merged_card
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.eval_rows import read_eval_rows, solution_examples
from qlora_gsm8k.io import atomic_directory, read_json, write_json
from qlora_gsm8k.peft_methods import check_method


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--eval", required=True, help="held-out rows with worked solutions (eval.merge_check_set)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics-out", required=True)
    startup.report_at_first_work()
    args, params = parse_stage_args(parser, check_method)
    examples = solution_examples(read_eval_rows(args.eval))[: params.eval.merge_check_size]
    # The weights hash and CUDA starts while torch, transformers and peft import.
    startup.check_weights_alongside(args.base, args.adapter)
    startup.start_cuda_alongside()
    from qlora_gsm8k.merging import check_merge, merge_adapter, merge_check_summary, save_merged

    merged, tokenizer, metrics = merge_adapter(Path(args.base), Path(args.adapter), examples, params)
    check_merge(metrics, params)
    with atomic_directory(args.out) as tmp:
        save_merged(merged, tokenizer, tmp, args.out)
        dtype = str(merged.dtype).removeprefix("torch.")
        # The train stage records it beside the adapter; an adapter trained elsewhere may not say.
        run = Path(args.adapter) / "training_run.json"
        trained_in = read_json(run).get("compute_dtype") if run.is_file() else None
        write_merged_card(tmp, args.out, Path(args.base), params, metrics, dtype, trained_in)
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
