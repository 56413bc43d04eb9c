"""Merge the adapter into the base reloaded in 16-bit (never into the 4-bit weights), then check the
merge: KL between the merged model and the adapter on the 4-bit base it was trained on."""

from pathlib import Path

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.gsm8k import read_jsonl
from qlora_gsm8k.io import atomic_directory, write_json
from qlora_gsm8k.merging import MergeCheckError, merge_adapter


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--eval", required=True, help="held-out rows for the merge check")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics-out", required=True)
    args, params = parse_stage_args(parser)
    examples = read_jsonl(args.eval)[: params.eval.merge_check_size]
    merged, tokenizer, metrics = merge_adapter(Path(args.base), Path(args.adapter), examples, params)
    write_json(args.metrics_out, {"merge": metrics})
    if metrics["kl_merged_vs_4bit_adapter"] > params.eval.merge_kl_threshold:
        raise MergeCheckError(
            f"merge check failed: mean KL(merged || 4-bit base + adapter) = "
            f"{metrics['kl_merged_vs_4bit_adapter']:.3g} > eval.merge_kl_threshold = "
            f"{params.eval.merge_kl_threshold}; see {args.metrics_out}"
        )
    with atomic_directory(args.out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"merged model saved to {args.out}; KL vs 4-bit adapter {metrics['kl_merged_vs_4bit_adapter']:.2e}")


if __name__ == "__main__":
    main()
