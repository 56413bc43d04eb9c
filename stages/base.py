"""Materialise the base model (tiny-llama, a local directory, a local GGUF file or a pinned Hub revision) on
disk, so every later stage and the saved adapter read the same weights offline. Safetensors weight files are
copied, not loaded; a GGUF file is dequantized once into a plain model directory."""

from pathlib import Path

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.config import ModelConfig, model_kind
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_directory, file_sha256, record_weight_digests, write_json
from qlora_gsm8k.sources import materialise_base


def provenance(cfg: ModelConfig) -> dict:
    """Where the weights came from: the pinned Hub revision, or for a local directory (which has no
    revision) the sha256 of the files read from it."""
    record = {"name": cfg.name, "revision": cfg.revision, "kind": model_kind(cfg.name)}
    if record["kind"] == "local":
        root = Path(cfg.name).expanduser()
        record["revision"] = None
        record["sha256"] = {f.name: file_sha256(f) for f in sorted(root.iterdir()) if f.is_file()}
    elif record["kind"] == "gguf":
        path = Path(cfg.name).expanduser()
        record["revision"] = None
        record["sha256"] = {path.name: file_sha256(path)}
    elif record["kind"] == "tiny":
        record["revision"] = None  # built in code from a fixed seed
    return record


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True)
    args, params = parse_stage_args(parser)
    with atomic_directory(args.out) as tmp:
        n_params = materialise_base(params.model, tmp)
        write_json(tmp / "provenance.json", provenance(params.model))
        record_weight_digests(tmp)
    print(f"saved base model {params.model.name} ({n_params / 1e6:.1f}M params) to {args.out}")


if __name__ == "__main__":
    main()
