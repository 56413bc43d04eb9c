"""Materialise the base model (tiny-llama, a local directory or a pinned Hub revision) on disk,
so every later stage and the saved adapter read the same weights offline."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_directory, write_json
from qlora_gsm8k.modeling import load_source_model, save_base


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True)
    args, params = parse_stage_args(parser)
    model, tokenizer = load_source_model(params.model)
    with atomic_directory(args.out) as tmp:
        save_base(model, tokenizer, tmp)
        write_json(tmp / "provenance.json", {"name": params.model.name, "revision": params.model.revision})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved base model {params.model.name} ({n_params / 1e6:.1f}M params) to {args.out}")


if __name__ == "__main__":
    main()
