"""Validate params.yaml before any stage that owns outputs runs: a typo costs a second, not a run."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_write_text


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="marker written when params are valid")
    args, _ = parse_stage_args(parser)
    # Constant content: downstream stages depend on it for ordering, and must not re-run because of it.
    atomic_write_text(args.out, "params.yaml is valid\n")


if __name__ == "__main__":
    main()
