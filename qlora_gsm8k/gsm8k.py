"""GSM8K rows: reading, validating, slicing, and answer extraction scored like lm-evaluation-harness."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .config import DataConfig
from .datafiles import read_records
from .errors import UserError
from .hub import local_cache_only
from .local_paths import looks_like_path, missing_path_error

# lm-evaluation-harness gsm8k: strict-match takes the first "#### number";
# flexible-extract takes the last number-looking span of the output.
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")


def normalize_number(text: str) -> str:
    """Drop commas, `$` and one trailing period, as the harness does (its regexes_to_ignore are
    ',', '\\$' and '\\.$'), so '1,000.' == '1000' while '5..' stays '5.', as it does there."""
    text = text.strip().lower().replace(",", "").replace("$", "")
    return text[:-1] if text.endswith(".") else text


def extract_strict(output: str) -> str | None:
    match = _STRICT.search(output)
    if not match:
        return None
    # '#### ,' or '#### .' holds no number: treat it like a missing answer, never as the number "".
    return normalize_number(match.group(1)) or None


def extract_flexible(output: str) -> str | None:
    matches = _FLEXIBLE.findall(output)
    if not matches:
        return None
    last = next(group for group in matches[-1] if group)
    normalized = normalize_number(last)
    return normalized or None


def reference_number(answer: str) -> str:
    number = extract_strict(answer)
    if number is None:
        raise ValueError("reference answer has no '#### <number>' line")
    return number


def is_correct(predicted: str | None, reference: str) -> bool:
    return predicted is not None and predicted == reference


def clean_answer(answer: str) -> str:
    """Reference solution as the model should write it: calculator annotations like <<2*3=6>> removed."""
    return _CALCULATOR_ANNOTATION.sub("", answer)


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    # Position in the source split, so every slice row can be traced back.
    index: int

    @property
    def number(self) -> str:
        return reference_number(self.answer)

    def to_json(self) -> dict:
        return {"index": self.index, "question": self.question, "answer": self.answer}


_ROW_LAYOUT = 'each row is a JSON object with text "question" and "answer" (ending "#### <number>"), as in GSM8K'


def parse_rows(rows: list[dict], where: str, line_numbers: list[int] | None = None) -> list[Example]:
    """Validate rows; errors name `where` and the row's line (`line_numbers[i]`, default i + 1).
    A row without an 'index' gets its position among the rows."""
    if line_numbers is None:
        line_numbers = list(range(1, len(rows) + 1))
    examples = []
    for position, (line_no, row) in enumerate(zip(line_numbers, rows, strict=True)):
        if not isinstance(row, dict):
            raise UserError(f"{where}:{line_no}: expected a JSON object, got {type(row).__name__}; {_ROW_LAYOUT}")
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            got = f"; its keys: {', '.join(map(repr, row))}" if "question" not in row else ""
            raise UserError(f"{where}:{line_no}: missing 'question' text{got}; {_ROW_LAYOUT}")
        if not isinstance(answer, str) or extract_strict(answer) is None:
            raise UserError(
                f"{where}:{line_no}: 'answer' has no '#### <number>' final line; end the answer text with one, "
                'as GSM8K does: "… so she has 42 apples.\\n#### 42"'
            )
        index = row.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise UserError(
                f"{where}:{line_no}: 'index' must be a non-negative integer, got {index!r}; write it as a number "
                '(7, not "7"), or leave it out and rows are numbered in file order'
            )
        examples.append(Example(question=question, answer=answer, index=index))
    return examples


def read_jsonl(path: str | Path) -> list[Example]:
    """GSM8K rows from a local file, read as the `datasets` JSON loader reads it (datafiles.py)."""
    path = Path(path)
    try:
        records = read_records(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    # Blank lines are skipped, but errors still name the line in the file.
    examples = parse_rows([row for _, row in records], str(path), [line_no for line_no, _ in records])
    if not examples:
        raise UserError(f"{path} holds no rows")
    return examples


def write_jsonl(examples: list[Example], path: str | Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(e.to_json()) + "\n" for e in examples))


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
