"""Fetch one evaluation set (an entry of eval_sets: Hub or a local file, in its layout) and write its deterministic
slice as eval rows, checked against the train slice; a set that is off gets an empty slice, read from nowhere."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.eval_rows import write_eval_rows
from qlora_gsm8k.eval_sets import fetch_eval_set
from qlora_gsm8k.io import file_sha256, write_json
from qlora_gsm8k.rows import read_jsonl


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--set", required=True, help="the set's name in eval_sets")
    parser.add_argument("--train", required=True, help="the train slice (JSONL), for the overlap check")
    parser.add_argument("--out", required=True, help="eval slice (JSONL)")
    parser.add_argument("--source-out", required=True, help="JSON recording where the rows came from")
    args, params = parse_stage_args(parser)
    rows, provenance = fetch_eval_set(args.set, params, read_jsonl(args.train))
    write_eval_rows(rows, args.out)
    if provenance["kind"] == "off":
        write_json(args.source_out, {**provenance, "rows": 0})
        print(f"{args.set} is off (eval_sets.{args.set}.enabled false): empty slice, its evaluations load no model")
        return
    if provenance["kind"] == "local":
        # A local file has no revision: record what was read, so a changed file shows in the record.
        provenance["sha256"] = file_sha256(provenance["source"])
    overlap = provenance["eval_rows_in_train"]
    if overlap:
        print(
            f"warning: {overlap} of {len(rows)} {args.set} questions are in the train slice too (allowed by "
            "data.max_eval_overlap)"
        )
    write_json(args.source_out, {**provenance, "rows": len(rows)})
    print(f"wrote {len(rows)} {args.set} rows from {provenance['source']}")


if __name__ == "__main__":
    main()
