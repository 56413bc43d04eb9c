"""SVAMP (Patel et al., NAACL 2021): arithmetic word problems varied to defeat shallow heuristics. Read from the Hub
or a local file in the published layout (Body, Question, Equation, Answer, Type), sliced, and turned into eval
rows that GSM8K's prompt, generation and scoring take unchanged: a GSM8K gain that vanishes here is format, not
reasoning."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .config import SvampConfig
from .datafiles import read_records
from .errors import UserError
from .hub import local_cache_only
from .local_paths import looks_like_path, missing_path_error
from .rows import Example, read_json_lines, write_json_lines

# One row of the published SVAMP.json spells its type "Common-Divison"; counted with its 165 siblings.
_TYPE_SPELLING = {"Common-Divison": "Common-Division"}


@dataclass(frozen=True)
class SvampRow:
    index: int
    id: str
    question: str
    number: str
    type: str

    def example(self) -> Example:
        """The row as GSM8K scoring reads it: the question is Body + " " + Question, the answer a '#### N' line."""
        return Example(question=self.question, answer=f"#### {self.number}", index=self.index)

    def to_json(self) -> dict:
        return {"index": self.index, "id": self.id, "question": self.question, "number": self.number, "type": self.type}


# A spreadsheet export writes numbers as text: "51", " 1,000 ", "$5". Thousands commas only: "2,5" may be a
# decimal comma, and would silently read as 25.
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d*)?")


def answer_number(value, where: str) -> str:
    """SVAMP's answer as scoring compares it: the JSON file holds 51.0, the Hub "51"; both become '51'."""
    text = value.strip().replace("$", "") if isinstance(value, str) else value
    if isinstance(text, str) and "," in text and _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise UserError(
            f"{where}: 'Answer' must be a number, got {value!r}; write it as a number (51, 2.5 or \"1,000\"; a decimal "
            "point, not a comma)"
        ) from None
    if not math.isfinite(number):
        raise UserError(f"{where}: 'Answer' must be finite, got {value!r}; write the number itself")
    # repr of a finite float is already in the form scoring compares (no comma, `$` or trailing period).
    return str(int(number)) if number.is_integer() else repr(number)


_LAYOUT = 'SVAMP layout: {"Body": "…", "Question": "…", "Answer": 5, "Type": "Addition"} per row'


def parse_svamp(rows: list, where: str, line_numbers: list[int] | None = None) -> list[SvampRow]:
    """Validate published-layout rows; errors name `where` and the row's line in its file (`line_numbers[i]`), or
    its position (1-based) when it has no file (the Hub)."""
    parsed = []
    for position, row in enumerate(rows):
        at = f"{where}:{line_numbers[position]}" if line_numbers else f"{where} row {position + 1}"
        if not isinstance(row, dict):
            raise UserError(f"{at}: expected a JSON object, got {type(row).__name__}; {_LAYOUT}")
        missing = [key for key in ("Body", "Question", "Answer", "Type") if key not in row]
        if missing:
            raise UserError(
                f"{at}: missing {', '.join(missing)}; its keys: {', '.join(map(repr, row))}; {_LAYOUT} (names as "
                "written, capitalised)"
            )
        body, question, kind = row["Body"], row["Question"], row["Type"]
        if not all(isinstance(text, str) for text in (body, question, kind)) or not question.strip():
            raise UserError(
                f"{at}: Body, Question and Type must be text, with a non-empty Question (an empty spreadsheet cell "
                f'is null: write "" for an empty Body); {_LAYOUT}'
            )
        parsed.append(
            SvampRow(
                index=position,
                id=str(row.get("ID", position)),
                question=f"{body.strip()} {question.strip()}".strip(),
                number=answer_number(row["Answer"], at),
                type=_TYPE_SPELLING.get(kind.strip(), kind.strip()),
            )
        )
    return parsed


def _read_rows(path: Path) -> tuple[list, list[int]]:
    """A JSON list (the published SVAMP.json, the Hub repo's <split>.json) or JSON lines, read as the `datasets`
    JSON loader reads them (datafiles.py); with each row's line."""
    try:
        records = read_records(path)
    except FileNotFoundError:
        raise missing_path_error("svamp.source", str(path)) from None
    if not records:
        raise UserError(f"svamp.source: {path} holds no rows; {_LAYOUT}")
    return [row for _, row in records], [line_no for line_no, _ in records]


def _local_file(cfg: SvampConfig) -> Path | None:
    if not looks_like_path(cfg.source):
        return None
    source = Path(cfg.source).expanduser()
    return source / f"{cfg.split}.json" if source.is_dir() else source


def load_svamp(cfg: SvampConfig) -> tuple[list[SvampRow], dict]:
    """All rows of the configured source and split, and where they came from."""
    local = _local_file(cfg)
    if local is not None:
        rows, line_numbers = _read_rows(local)
        return parse_svamp(rows, str(local), line_numbers), {"source": str(local), "kind": "local"}
    local_cache_only()  # before importing datasets
    try:
        import datasets
    except ImportError:
        raise UserError("the 'datasets' package is needed to read svamp.source from the Hub") from None
    try:
        loaded = datasets.load_dataset(cfg.source, revision=cfg.revision, split=cfg.split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise UserError(
            f"cannot load dataset {cfg.source!r} (split {cfg.split!r}, revision {cfg.revision}) from the Hugging "
            f"Face Hub ({type(err).__name__}). Offline? Set svamp.source to a local SVAMP.json (the published "
            "file, github.com/arkilpatel/SVAMP), e.g. dvc exp run -S svamp.source=/path/to/SVAMP.json, "
            "or turn the set off: -S svamp.enabled=false"
        ) from None
    provenance = {"source": cfg.source, "split": cfg.split, "revision": cfg.revision, "kind": "hub"}
    return parse_svamp(list(loaded), f"{cfg.source}:{cfg.split}"), provenance


def take_svamp_slice(rows: list[SvampRow], cfg: SvampConfig) -> list[SvampRow]:
    if cfg.offset + cfg.size > len(rows):
        raise UserError(
            f"svamp.offset + svamp.size = {cfg.offset + cfg.size} exceeds the {len(rows)} rows of {cfg.source}"
        )
    return rows[cfg.offset : cfg.offset + cfg.size]


def write_svamp_slice(rows: list[SvampRow], path: str | Path) -> None:
    write_json_lines(path, [r.to_json() for r in rows])


def read_svamp_slice(path: str | Path) -> list[SvampRow]:
    """What the fetch_svamp stage wrote (possibly nothing: the set is off)."""
    try:
        records = read_json_lines(path)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err}") from None
    return [SvampRow(**record) for record in records]
