"""Fetch GSM8K (Hub or local directory) and write the deterministic train and eval slices."""

from pathlib import Path

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.gsm8k import eval_overlap, load_splits, take_slice
from qlora_gsm8k.io import file_sha256, write_json
from qlora_gsm8k.rows import write_jsonl


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--eval-out", required=True)
    parser.add_argument("--source-out", required=True, help="JSON recording where the rows came from")
    args, params = parse_stage_args(parser)
    cfg = params.data
    train, test, provenance = load_splits(cfg)
    train_slice = take_slice(train, cfg.train_offset, cfg.train_size, cfg.shuffle_seed, "train")
    eval_slice = take_slice(test, cfg.eval_offset, cfg.eval_size, cfg.shuffle_seed, "eval")
    overlap = eval_overlap(train_slice, eval_slice, cfg.max_eval_overlap)
    if overlap:
        print(
            f"warning: {overlap} of {len(eval_slice)} eval questions are in the train slice too "
            "(allowed by data.max_eval_overlap)"
        )
    write_jsonl(train_slice, args.train_out)
    write_jsonl(eval_slice, args.eval_out)
    if provenance.get("kind") == "local":
        # A local directory has no revision: record what was read, so a changed file shows in the record.
        root = Path(provenance["source"])
        provenance["sha256"] = {name: file_sha256(root / name) for name in ("train.jsonl", "test.jsonl")}
    counts = {"train_rows": len(train_slice), "eval_rows": len(eval_slice), "eval_rows_in_train": overlap}
    write_json(args.source_out, {**provenance, **counts})
    print(f"wrote {len(train_slice)} train rows and {len(eval_slice)} eval rows from {provenance['source']}")


if __name__ == "__main__":
    main()
