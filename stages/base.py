"""Materialise the base model (tiny-llama, a local directory, a local GGUF file or a pinned Hub revision) on
disk, so every later stage and the saved adapter read the same weights offline. Safetensors weight files are
copied, not loaded; a GGUF file is dequantized once into a plain model directory."""

from qlora_gsm8k import startup
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_directory, record_weight_digests, write_json
from qlora_gsm8k.model_sources import model_source


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True)
    startup.report_at_first_work()
    args, params = parse_stage_args(parser)
    with atomic_directory(args.out) as tmp:
        source = model_source(params.model)
        n_params = source.materialise(tmp)
        # Where the weights came from: the pinned Hub revision, or the sha256 of the local files read.
        write_json(tmp / "provenance.json", source.provenance())
        record_weight_digests(tmp)
    print(f"saved base model {params.model.name} ({n_params / 1e6:.1f}M params) to {args.out}")


if __name__ == "__main__":
    main()
