"""What every stage script shares: argument parsing with --params, and logging set-up."""

from __future__ import annotations

import argparse
import logging
import os

from .config import Params, load_params


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def parse_stage_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Params]:
    args = parser.parse_args()
    # Quiet the libraries' advisory chatter; progress bars and our own lines stay.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional kernels package is missing; its
    # plain CPU path is what runs, and works (README: troubleshooting).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    return args, load_params(args.params)
