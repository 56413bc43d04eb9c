"""What every stage script shares: argument parsing with --params, and logging set-up."""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .config import Params
from .errors import UserError, at_stage_end
from .params_file import load_params, params_as_dict
from .progress import quiet_library_bars


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def parse_stage_args(
    parser: argparse.ArgumentParser, *checks: Callable[[Params], None]
) -> tuple[argparse.Namespace, Params]:
    """The stage's arguments and its validated params; `checks`: what the stage checks beyond every stage's params
    (peft_methods.check_method where it reads the method), run before anything else."""
    args = parser.parse_args()
    # Quiet the libraries' advisory chatter; progress stays (bars in a terminal, lines in a log: progress.py).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional kernels package is missing; its
    # plain CPU path is what runs, and works (README: troubleshooting).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    quiet_library_bars()
    params = load_params(args.params)
    for check in checks:
        check(params)
    at_stage_end(functools.partial(check_params_unchanged, Path(args.params), params))
    return args, params


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_params_unchanged(path: Path, used: Params) -> None:
    """DVC reads params.yaml for dvc.lock when a stage ends, not when it starts: an edit (or a refused
    `dvc exp run -S`, which rewrites the file) during a run would record params this stage never used, and the
    run-cache would serve its outputs for them later. Fail instead, so nothing is recorded."""
    try:
        now = load_params(path)
    except UserError:
        now = None
    if now == used:
        return
    before = _flat(params_as_dict(used))
    after = _flat(params_as_dict(now)) if now is not None else {}
    changed = [f"{k}: {before[k]!r} → {after.get(k, 'unreadable')!r}" for k in before if before[k] != after.get(k)]
    raise UserError(
        f"{path} changed while this stage ran ({'; '.join(changed[:3])}): its outputs were made with the params "
        "it read at the start, and DVC would record the new ones beside them, so the stage fails and records "
        "nothing; run `dvc repro` again (or `dvc exp run` once the other run is done)"
    )
