"""Fetch SVAMP (Hub or a local file) and write the deterministic eval slice; with svamp.enabled false, an empty one."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import file_sha256, write_json
from qlora_gsm8k.svamp import load_svamp, take_svamp_slice, write_svamp_slice


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="eval slice (JSONL)")
    parser.add_argument("--source-out", required=True, help="JSON recording where the rows came from")
    args, params = parse_stage_args(parser)
    cfg = params.svamp
    if not cfg.enabled:
        write_svamp_slice([], args.out)
        write_json(args.source_out, {"kind": "off", "rows": 0})
        print("SVAMP is off (svamp.enabled false): empty slice, its evaluations will load no model")
        return
    rows, provenance = load_svamp(cfg)
    chosen = take_svamp_slice(rows, cfg)
    write_svamp_slice(chosen, args.out)
    if provenance["kind"] == "local":
        # A local file has no revision: record what was read, so a changed file shows in the record.
        provenance["sha256"] = file_sha256(provenance["source"])
    write_json(args.source_out, {**provenance, "rows": len(chosen)})
    print(f"wrote {len(chosen)} SVAMP rows from {provenance['source']}")


if __name__ == "__main__":
    main()
