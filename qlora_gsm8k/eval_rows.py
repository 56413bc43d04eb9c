"""Evaluation rows, one type for every set: the question, the reference number scoring compares answers with, and
what some layouts add (GSM8K's worked solution, SVAMP's problem type). Each layout's rows are normalised into it
when a set is fetched, so nothing downstream knows which layout a set came in."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UserError
from .rows import Example, final_number, parse_rows, read_json_lines, write_json_lines


@dataclass(frozen=True)
class EvalRow:
    # Position in the source split, so every slice row can be traced back.
    index: int
    question: str
    # The reference answer as scoring compares it (no comma, `$` or trailing period): '51', '2.5'.
    number: str
    # A worked solution ending '#### N' (GSM8K layout): what perplexity and the merge check score. None: none.
    solution: str | None = None
    # A problem type (SVAMP's Type, a plain row's optional "type"): the report breaks results down by it.
    type: str | None = None

    def example(self) -> Example:
        """The row with its worked solution as the response, for perplexity and the merge check."""
        if self.solution is None:
            raise ValueError(f"eval row {self.index} has no worked solution to score")
        return Example(question=self.question, answer=self.solution, index=self.index)

    def to_json(self) -> dict:
        return {"index": self.index, "question": self.question, "number": self.number, "solution": self.solution,
                "type": self.type}  # fmt: skip


# A spreadsheet export writes numbers as text: "51", " 1,000 ", "$5". Thousands commas only: "2,5" may be a
# decimal comma, and would silently read as 25.
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d*)?")


def answer_number(value, at: str, key: str) -> str:
    """A reference answer given as a number (51.0 in SVAMP.json, "51" on the Hub, "1,000" from a spreadsheet) in
    the form scoring compares: '51'."""
    text = value.strip().replace("$", "") if isinstance(value, str) else value
    if isinstance(text, str) and "," in text and _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise UserError(
            f'{at}: {key!r} must be a number, got {value!r}; write it as a number (51, 2.5 or "1,000"; a decimal '
            "point, not a comma)"
        ) from None
    if not math.isfinite(number):
        raise UserError(f"{at}: {key!r} must be finite, got {value!r}; write the number itself")
    # repr of a finite float is already in the form scoring compares (no comma, `$` or trailing period).
    return str(int(number)) if number.is_integer() else repr(number)


def _objects(rows: list, where: str, line_numbers: list[int] | None, layout: str):
    """(position, address for errors, row) of each row, refused unless a JSON object. The address is file:line, or
    for rows without a file (the Hub) their position, 1-based."""
    for position, row in enumerate(rows):
        at = f"{where}:{line_numbers[position]}" if line_numbers else f"{where} row {position + 1}"
        if not isinstance(row, dict):
            raise UserError(f"{at}: expected a JSON object, got {type(row).__name__}; {layout}")
        yield position, at, row


def _gsm8k_rows(rows: list, where: str, line_numbers: list[int] | None) -> list[EvalRow]:
    numbered = line_numbers or list(range(1, len(rows) + 1))
    return [
        EvalRow(index=e.index, question=e.question, number=final_number(e.answer), solution=e.answer)
        for e in parse_rows(rows, where, numbered)
    ]


_SVAMP_LAYOUT = 'SVAMP layout: {"Body": "…", "Question": "…", "Answer": 5, "Type": "Addition"} per row'
# One row of the published SVAMP.json spells its type "Common-Divison"; counted with its 165 siblings.
_TYPE_SPELLING = {"Common-Divison": "Common-Division"}


def _svamp_rows(rows: list, where: str, line_numbers: list[int] | None) -> list[EvalRow]:
    parsed = []
    for position, at, row in _objects(rows, where, line_numbers, _SVAMP_LAYOUT):
        missing = [key for key in ("Body", "Question", "Answer", "Type") if key not in row]
        if missing:
            raise UserError(
                f"{at}: missing {', '.join(missing)}; its keys: {', '.join(map(repr, row))}; {_SVAMP_LAYOUT} (names "
                "as written, capitalised)"
            )
        body, question, kind = row["Body"], row["Question"], row["Type"]
        if not all(isinstance(text, str) for text in (body, question, kind)) or not question.strip():
            raise UserError(
                f"{at}: Body, Question and Type must be text, with a non-empty Question (an empty spreadsheet cell "
                f'is null: write "" for an empty Body); {_SVAMP_LAYOUT}'
            )
        parsed.append(
            EvalRow(
                index=position,
                question=f"{body.strip()} {question.strip()}".strip(),
                number=answer_number(row["Answer"], at, "Answer"),
                type=_TYPE_SPELLING.get(kind.strip(), kind.strip()),
            )
        )
    return parsed


_PLAIN_LAYOUT = 'plain layout: {"question": "…", "answer": 42} per row (optional "type": "…")'


def _plain_rows(rows: list, where: str, line_numbers: list[int] | None) -> list[EvalRow]:
    parsed = []
    for position, at, row in _objects(rows, where, line_numbers, _PLAIN_LAYOUT):
        question, kind = row.get("question"), row.get("type")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{at}: missing 'question' text; its keys: {', '.join(map(repr, row))}; {_PLAIN_LAYOUT}")
        if "answer" not in row:
            raise UserError(f"{at}: missing 'answer'; its keys: {', '.join(map(repr, row))}; {_PLAIN_LAYOUT}")
        if kind is not None and not isinstance(kind, str):
            raise UserError(f"{at}: 'type' must be text, got {kind!r}; {_PLAIN_LAYOUT}")
        number = answer_number(row["answer"], at, "answer")
        parsed.append(EvalRow(index=position, question=question.strip(), number=number, type=kind))
    return parsed


NORMALISERS = {"gsm8k": _gsm8k_rows, "svamp": _svamp_rows, "plain": _plain_rows}


def normalise_rows(layout: str, rows: list, where: str, line_numbers: list[int] | None = None) -> list[EvalRow]:
    """Rows as read from a source in `layout`, validated and normalised; errors name `where` and the row's line in its
    file (`line_numbers[i]`), or its position (1-based) when it has no file (the Hub)."""
    return NORMALISERS[layout](rows, where, line_numbers)


def write_eval_rows(rows: list[EvalRow], path) -> None:
    write_json_lines(path, [row.to_json() for row in rows])


def read_eval_rows(path) -> list[EvalRow]:
    """What the fetch_eval stage wrote (possibly nothing: the set is off)."""
    try:
        records = read_json_lines(path)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err}") from None
    return [EvalRow(**record) for record in records]


def solution_examples(rows: list[EvalRow]) -> list[Example]:
    """The rows as Examples when every one has a worked solution (what perplexity scores), else none."""
    return [row.example() for row in rows] if rows and all(row.solution for row in rows) else []
