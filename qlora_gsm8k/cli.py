"""What every stage script shares: argument parsing with --params, and logging set-up."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from .config import Params, load_params
from .errors import UserError

# Hugging Face user access tokens: "hf_" and 30-odd letters and digits.
_HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def refuse_secrets(path: str | Path) -> None:
    """A token in params.yaml would be committed to git and copied into dvc.lock and every experiment:
    refuse it, naming the line but never echoing the value."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return  # load_params reports an unreadable file
    for line_no, line in enumerate(text.splitlines(), start=1):
        if _HF_TOKEN_PATTERN.search(line):
            raise UserError(
                f"{path}:{line_no} holds what looks like a Hugging Face token; remove it (and revoke it if it "
                "was committed) and set the HF_TOKEN environment variable instead: params are recorded in git "
                "and dvc.lock, the environment is not"
            )


def eval_stage_parser(description: str) -> argparse.ArgumentParser:
    """Arguments of the stages that evaluate one model (base or tuned) on the eval slice."""
    parser = stage_parser(description)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--label", required=True, choices=["base", "tuned"])
    parser.add_argument("--eval", required=True, help="eval slice (JSONL)")
    parser.add_argument("--metrics-out", required=True)
    return parser


def parse_stage_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Params]:
    args = parser.parse_args()
    # Quiet the libraries' advisory chatter; progress bars and our own lines stay.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    refuse_secrets(args.params)
    return args, load_params(args.params)
