"""GSM8K as a source: its train and test splits from the Hugging Face Hub or a local directory, the deterministic
slices of them, and the overlap check between the two (rows themselves: rows.py)."""

from __future__ import annotations

import random
from pathlib import Path

from .config import DataConfig
from .errors import UserError
from .hub import local_cache_only
from .local_paths import looks_like_path, missing_path_error
from .rows import Example, parse_rows, read_jsonl


def take_slice(examples: list[Example], offset: int, size: int, seed: int, what: str) -> list[Example]:
    """Deterministic slice: optional seeded shuffle of the split, then rows [offset, offset + size)."""
    if offset + size > len(examples):
        raise UserError(
            f"data.{what}_offset + data.{what}_size = {offset + size} exceeds the {len(examples)} rows "
            f"of the {'train' if what == 'train' else 'test'} split"
        )
    ordered = list(examples)
    if seed:
        random.Random(seed).shuffle(ordered)
    return ordered[offset : offset + size]


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def eval_overlap(train: list[Example], evaluated: list[Example], max_share: float) -> int:
    """How many eval questions also appear (case and spacing aside) in the train slice; refused above
    `max_share` of the eval slice (data.max_eval_overlap): the tuned model would be scored on what it was taught."""
    seen = {_question_key(e.question) for e in train}
    overlapping = [e.index for e in evaluated if _question_key(e.question) in seen]
    if evaluated and len(overlapping) / len(evaluated) > max_share:
        raise UserError(
            f"{len(overlapping)} of {len(evaluated)} eval questions are also in the train slice (eval rows "
            f"{', '.join(map(str, overlapping[:5]))}{'…' if len(overlapping) > 5 else ''}): the tuned model would be "
            f"scored on rows it was trained on. Use disjoint train and test files, or allow it with "
            f"-S data.max_eval_overlap={len(overlapping) / len(evaluated):.2f}"
        )
    return len(overlapping)


def load_splits(cfg: DataConfig) -> tuple[list[Example], list[Example], dict]:
    """Return (train split, test split, provenance) from a local directory or the Hugging Face Hub."""
    if looks_like_path(cfg.source):
        root = Path(cfg.source).expanduser()
        if not root.exists():
            raise missing_path_error("data.source", cfg.source)
        if not root.is_dir():
            raise UserError(f"data.source {cfg.source!r} is not a directory")
        train = read_jsonl(root / "train.jsonl")
        test = read_jsonl(root / "test.jsonl")
        return train, test, {"source": str(root), "kind": "local"}
    return _load_hub_splits(cfg)


def _load_hub_splits(cfg: DataConfig) -> tuple[list[Example], list[Example], dict]:
    local_cache_only()  # before importing datasets
    try:
        import datasets
    except ImportError:
        raise UserError("the 'datasets' package is needed to read data.source from the Hub") from None
    try:
        loaded = datasets.load_dataset(cfg.source, cfg.config, revision=cfg.revision)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise UserError(
            f"cannot load dataset {cfg.source!r} (config {cfg.config!r}, revision {cfg.revision}) from the "
            f"Hugging Face Hub ({type(err).__name__}). Offline? Set data.source to a local directory "
            "holding train.jsonl and test.jsonl, e.g. dvc exp run -S data.source=/path/to/gsm8k"
        ) from None
    train = parse_rows(list(loaded["train"]), f"{cfg.source}:train")
    test = parse_rows(list(loaded["test"]), f"{cfg.source}:test")
    return train, test, {"source": cfg.source, "config": cfg.config, "revision": cfg.revision, "kind": "hub"}
