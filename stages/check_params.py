"""Validate params.yaml, and what it points at, before any stage that owns outputs runs: a typo, a bad data
file or a model that cannot be found costs seconds, not a run, and leaves dvc.lock, metrics/ and the
DVC cache as they were (DVC deletes a stage's outputs before running it, and records dvc.lock per stage).

Checked here, in this order (cheapest first):
- every param: type, range, unknown keys (qlora_gsm8k.config); no token in the params file;
- Hub revisions pinned to a commit hash;
- the data: data.source readable, every JSONL line well-formed with a '#### <number>' answer, and the
  slices within their splits (the same code the fetch stage runs);
- the model: found (local directory with safetensors weights, tiny-llama, or the Hub / its cache when
  offline) and lora.target_modules exist in it (from its config alone, no weights loaded);
- what train.liger_kernel=true needs (a CUDA GPU, liger-kernel installed), and train.compile=true (a CUDA GPU).
"""

import re

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.config import Params
from qlora_gsm8k.errors import UserError, stage_main
from qlora_gsm8k.gsm8k import is_local_source, load_splits, take_slice
from qlora_gsm8k.io import atomic_write_text

_COMMIT = re.compile(r"[0-9a-f]{40}")


def check_revisions(params: Params) -> None:
    """A branch or tag can move; a commit hash cannot. Hub sources must be pinned to one."""
    from qlora_gsm8k.modeling import model_kind  # imports torch: after the params checks

    pinned = []
    if model_kind(params.model.name) == "hub":
        pinned.append(("model.revision", params.model.revision, params.model.name))
    if not is_local_source(params.data.source):
        pinned.append(("data.revision", params.data.revision, params.data.source))
    for key, revision, name in pinned:
        if not _COMMIT.fullmatch(revision):
            raise UserError(
                f"{key} must be a full 40-character commit hash for the Hub repository {name!r}, got "
                f"{revision!r} (a branch or tag can move); copy it from the repository's 'Files and versions' page"
            )


def check_data(params: Params) -> None:
    cfg = params.data
    train, test, _ = load_splits(cfg)
    take_slice(train, cfg.train_offset, cfg.train_size, cfg.shuffle_seed, "train")
    take_slice(test, cfg.eval_offset, cfg.eval_size, cfg.shuffle_seed, "eval")


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="marker written when params are valid")
    args, params = parse_stage_args(parser)
    check_revisions(params)
    check_data(params)
    from qlora_gsm8k.modeling import check_model_source
    from qlora_gsm8k.training import compile_enabled, liger_kernel_enabled

    check_model_source(params.model, params.lora.target_modules)
    liger_kernel_enabled(params.train)
    compile_enabled(params.train)
    # Constant content: downstream stages depend on it for ordering, and must not re-run because of it.
    atomic_write_text(args.out, "params.yaml is valid\n")


if __name__ == "__main__":
    main()
