"""GSM8K as the training source: its train split from the Hugging Face Hub or a local directory, deterministic
slices, and the overlap check between the train slice and an eval set (rows themselves: rows.py)."""

from __future__ import annotations

import random
from pathlib import Path

from .config import DataConfig
from .dataset_sources import read_split
from .errors import UserError
from .local_paths import looks_like_path
from .rows import Example, parse_rows


def _slice_keys(what: str) -> str:
    """The params a slice comes from: 'train' is data.train_*, an eval set its own entry (eval_sets.<name>)."""
    return "data.train_offset + data.train_size" if what == "train" else f"{what}.offset + {what}.size"


def take_slice(rows: list, offset: int, size: int, seed: int, what: str) -> list:
    """Deterministic slice: optional seeded shuffle of the split, then rows [offset, offset + size). `what`: 'train',
    or the eval set's params key (eval_sets.<name>), named when the slice does not fit."""
    if offset + size > len(rows):
        raise UserError(f"{_slice_keys(what)} = {offset + size} exceeds the {len(rows)} rows of its split")
    ordered = list(rows)
    if seed:
        random.Random(seed).shuffle(ordered)
    return ordered[offset : offset + size]


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def eval_overlap(train: list[Example], evaluated: list, max_share: float, what: str = "eval") -> int:
    """How many of an eval set's questions (`evaluated`: rows with .question and .index) also appear (case and
    spacing aside) in the train slice; refused above `max_share` of the set (data.max_eval_overlap): the tuned
    model would be scored on what it was taught."""
    seen = {_question_key(e.question) for e in train}
    overlapping = [e.index for e in evaluated if _question_key(e.question) in seen]
    if evaluated and len(overlapping) / len(evaluated) > max_share:
        raise UserError(
            f"{len(overlapping)} of {len(evaluated)} {what} questions are also in the train slice ({what} rows "
            f"{', '.join(map(str, overlapping[:5]))}{'…' if len(overlapping) > 5 else ''}): the tuned model would be "
            f"scored on rows it was trained on. Use disjoint train and test files, or allow it with "
            f"-S data.max_eval_overlap={len(overlapping) / len(evaluated):.2f}"
        )
    return len(overlapping)


def load_train_split(cfg: DataConfig) -> tuple[list[Example], dict]:
    """The whole train split of data.source (a local directory's train.jsonl, or the Hub) and its provenance."""
    if looks_like_path(cfg.source) and Path(cfg.source).expanduser().is_file():
        raise UserError(f"data.source {cfg.source!r} is not a directory; point it at one holding train.jsonl")
    rows, line_numbers, where, provenance = read_split(
        "data.source", cfg.source, cfg.config, cfg.revision, "train", ".jsonl",
        "Set data.source to a local directory holding train.jsonl and test.jsonl, e.g. dvc exp run "
        "-S data.source=/path/to/gsm8k",
    )  # fmt: skip
    if provenance["kind"] == "hub":
        provenance.pop("split")
    return parse_rows(rows, where, line_numbers), provenance
