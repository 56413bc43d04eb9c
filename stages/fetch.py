"""Fetch GSM8K's train split (Hub or local directory) and write the deterministic train slice. The eval sets are
fetched by fetch_eval, one stage per set."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.gsm8k import load_train_split, take_slice
from qlora_gsm8k.io import file_sha256, write_json
from qlora_gsm8k.rows import write_jsonl


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--source-out", required=True, help="JSON recording where the rows came from")
    args, params = parse_stage_args(parser)
    cfg = params.data
    train, provenance = load_train_split(cfg)
    train_slice = take_slice(train, cfg.train_offset, cfg.train_size, cfg.shuffle_seed, "train")
    write_jsonl(train_slice, args.train_out)
    if provenance.get("kind") == "local":
        # A local file has no revision: record what was read, so a changed file shows in the record.
        provenance["sha256"] = file_sha256(provenance["source"])
    write_json(args.source_out, {**provenance, "train_rows": len(train_slice)})
    print(f"wrote {len(train_slice)} train rows from {provenance['source']}")


if __name__ == "__main__":
    main()
