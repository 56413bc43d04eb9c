"""Local data files as users' tools write them, read as the `datasets` JSON loader reads them (what the Hub path
uses), so a file reads the same whichever way it is given.

What `datasets.load_dataset("json", data_files=...)` (5.2) accepts, tried on crafted files, and so do we: a UTF-8
BOM; CRLF or bare CR line endings; blank or whitespace-only lines; trailing whitespace; no final newline; JSON
objects one per line, or pretty-printed over several lines, or several on a line (its reader takes a stream of
objects); a whole file that is one JSON list of objects. What it refuses, and so do we, each in one line naming the
file, the line and the fix: UTF-16/UTF-32 text (Windows "Unicode"), other non-UTF-8 bytes (Windows-1252 from a
spreadsheet), stray control characters (a NUL, an MS-DOS end-of-file mark), trailing commas, single quotes."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

from .errors import UserError

_WIDE_BOMS = [
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
]
SAVE_AS_UTF8 = "save it as UTF-8 (in Notepad or VS Code: Save as / Save with Encoding, UTF-8)"
ONE_OBJECT_PER_LINE = (
    'write each row as one JSON object, {"name": value, …}, usually one per line; or make the whole file one JSON '
    "list: [{…}, {…}]"
)
_STRAY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _decode(path: Path, data: bytes) -> str:
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            raise UserError(f"{path}:1: {name} text (what Windows tools call 'Unicode'), not UTF-8; {SAVE_AS_UTF8}")
    if len(data) >= 4 and (data[1:4:2] == b"\x00\x00" or data[0:3:2] == b"\x00\x00"):
        raise UserError(f"{path}:1: UTF-16 text without a byte-order mark, not UTF-8; {SAVE_AS_UTF8}")
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as err:
        # The decoder names a byte offset; people look for lines.
        line_no = data[: err.start].count(b"\n") + 1
        byte = data[err.start]
        guess = bytes([byte]).decode("cp1252", "replace")
        raise UserError(
            f"{path}:{line_no}: not UTF-8 text ({err.reason} at byte {err.start}); byte 0x{byte:02X} is {guess!r} in "
            f"Windows-1252, what spreadsheets and older editors write: {SAVE_AS_UTF8}"
        ) from None


def _json_fix(line: str, col: int, msg: str) -> str:
    """What to change, from what is wrong at `line[col]`: the decoder's message alone ('Expecting value') says
    neither what nor how."""
    stray = _STRAY.search(line)
    if stray:
        code = ord(stray.group())
        what = {0x00: "a NUL byte", 0x1A: "an MS-DOS end-of-file mark (Ctrl-Z)"}.get(code, "a control character")
        return f"{what}, 0x{code:02X}, at column {stray.start() + 1}: delete it"
    if "double quotes" in msg and line[:col].rstrip().endswith(","):
        return f"a comma before the closing brace at column {col + 1}: delete it"
    if "double quotes" in msg:
        return 'JSON names and strings take double quotes ("question"), not single quotes'
    if line[col:].strip() == ",":
        return "a comma after the object: delete it (rows are separated by line breaks, not commas)"
    return f"at column {col + 1}; {ONE_OBJECT_PER_LINE}"


class _Reader:
    """JSON values one after another in `text` (line ends normalised to \\n), each with the line it starts on."""

    def __init__(self, path: Path, text: str):
        self.path, self.text, self.decoder = path, text, json.JSONDecoder()
        self._counted = (0, 1)  # a position and its line: counting on from there keeps 7,000 rows linear

    def line_of(self, pos: int) -> int:
        start, line_no = self._counted if pos >= self._counted[0] else (0, 1)
        self._counted = (pos, line_no + self.text.count("\n", start, pos))
        return self._counted[1]

    def skip(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in " \t\n":
            pos += 1
        return pos

    def at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def fail(self, pos: int, what: str) -> UserError:
        return UserError(f"{self.path}:{self.line_of(pos)}: {what}")

    def value(self, pos: int) -> tuple[tuple[int, object], int]:
        """((line, value), end) of the value starting at `pos`; a UserError naming its line and the fix if broken."""
        try:
            value, end = self.decoder.raw_decode(self.text, pos)
        except json.JSONDecodeError as err:
            if err.lineno != self.line_of(pos):  # a row over several lines, broken further down
                raise self.fail(
                    pos,
                    f"malformed JSON: the row that starts on this line does not parse ({err.msg} at line "
                    f"{err.lineno}, column {err.colno}): an unfinished row, or a missing comma or quote; "
                    f"{ONE_OBJECT_PER_LINE}",
                ) from None
            line = self.text.split("\n")[err.lineno - 1]
            fix = _json_fix(line, err.colno - 1, err.msg)
            raise self.fail(pos, f"malformed JSON ({err.msg}): {fix}") from None
        return (self.line_of(pos), value), end

    def stream(self) -> list[tuple[int, object]]:
        records, pos = [], self.skip(0)
        while pos < len(self.text):
            record, end = self.value(pos)
            records.append(record)
            pos = self.skip(end)
        return records

    def json_list(self) -> list[tuple[int, object]]:
        records, pos, comma = [], self.skip(self.text.index("[") + 1), None
        while self.at(pos) not in ("]", ""):
            record, end = self.value(pos)
            records.append(record)
            pos, comma = self.skip(end), None
            if self.at(pos) == ",":
                pos, comma = self.skip(pos + 1), pos
            elif self.at(pos) != "]":
                raise self.fail(pos, "malformed JSON list: a comma is missing between two rows (or a bracket)")
        if pos >= len(self.text):
            raise self.fail(pos, "the JSON list never closes: end it with ]")
        if comma is not None:
            raise self.fail(comma, "a comma after the last row of the list: delete it")
        if self.text[pos + 1 :].strip():
            raise self.fail(self.skip(pos + 1), "text after the closing ] of the list: delete it")
        return records


def read_records(path: str | Path) -> list[tuple[int, object]]:
    """(line number, parsed row) of every row in a JSON Lines file or a file holding one JSON list. Raises
    FileNotFoundError for a missing file (callers word that themselves) and UserError for anything unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UserError(f"cannot read {path}: {err}") from None
    text = _decode(path, data)
    # JSON strings cannot hold a raw CR, so normalising line ends changes no row, only what counts as a line.
    reader = _Reader(path, text.replace("\r\n", "\n").replace("\r", "\n"))
    # As datasets does: a file that starts with "[" is one JSON list; anything else a stream of JSON objects.
    return reader.json_list() if text.lstrip().startswith("[") else reader.stream()
