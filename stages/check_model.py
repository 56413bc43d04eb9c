"""Check the LoRA settings against the base model's architecture before the train stage starts, so a
wrong lora.target_modules costs a second and leaves the last adapter, metrics and dvc.lock untouched."""

from pathlib import Path

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_write_text
from qlora_gsm8k.modeling import check_target_modules, model_skeleton


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", required=True, help="base model directory")
    parser.add_argument("--out", required=True, help="marker written when the check passes")
    args, params = parse_stage_args(parser)
    check_target_modules(model_skeleton(Path(args.base)), params.lora.target_modules)
    # Constant content: the train stage orders after this one without re-running because of it.
    atomic_write_text(args.out, "lora.target_modules exist in the base model\n")


if __name__ == "__main__":
    main()
