"""Eval and train rows (question, reference answer, index) in GSM8K's layout: validated, and read from and written
to JSON Lines. Every stage that reads the slices imports this; how an answer is scored lives in scoring.py, so a
scoring fix never re-runs fetch or train."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .datafiles import read_records
from .errors import UserError

# GSM8K's layout: the worked solution, then "#### <number>". Only whether a row has that line is checked here;
# answers.reference_number reads the number (the same pattern as lm-eval's strict-match, which reads outputs).
_FINAL_LINE = re.compile(r"#### (\-?[0-9\.\,]+)")
_CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")


def has_final_number(answer: str) -> bool:
    """Whether the answer's first '#### ' line holds a number: '#### ,' or '#### .' holds none (commas and one
    trailing period are what scoring drops, leaving nothing)."""
    match = _FINAL_LINE.search(answer)
    return match is not None and match.group(1).replace(",", "") not in ("", ".")


def normalize_number(text: str) -> str:
    """Drop commas, `$` and one trailing period, as lm-evaluation-harness does (its regexes_to_ignore are
    ',', '\\$' and '\\.$'), so '1,000.' == '1000' while '5..' stays '5.', as it does there. Here, not in scoring.py:
    references are normalised when a set is fetched, answers when they are scored, the same way."""
    text = text.strip().lower().replace(",", "").replace("$", "")
    return text[:-1] if text.endswith(".") else text


def final_number(answer: str) -> str:
    """The number on a GSM8K answer's first '#### ' line, normalised (the reference scoring compares with)."""
    match = _FINAL_LINE.search(answer)
    # '#### ,' or '#### .' holds no number: normalised, nothing is left.
    number = normalize_number(match.group(1)) if match else ""
    if not number:
        raise ValueError("reference answer has no '#### <number>' line")
    return number


def clean_answer(answer: str) -> str:
    """Reference solution as the model should write it: calculator annotations like <<2*3=6>> removed."""
    return _CALCULATOR_ANNOTATION.sub("", answer)


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    # Position in the source split, so every slice row can be traced back.
    index: int

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
        if not isinstance(answer, str) or not has_final_number(answer):
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
    write_json_lines(path, [e.to_json() for e in examples])


def write_json_lines(path: str | Path, records: list[dict]) -> None:
    """One JSON object per line, written atomically: the row files stages pass each other (slices, generations)."""
    from .io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json_lines(path: str | Path) -> list:
    """What write_json_lines wrote, blank lines skipped. Files users give go through datafiles.read_records, which
    reads what their tools write and names the line of a broken row."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
