"""Local data as spreadsheets and Windows editors write it: read as the `datasets` JSON loader reads it (the same
rows, whichever way a file is given), and what neither reads refused in one line naming the file, the line and
the fix."""

from __future__ import annotations

import codecs
import json

import pytest

from qlora_gsm8k.answers import reference_number
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.eval_config import EvalSetConfig
from qlora_gsm8k.eval_sets import load_eval_set
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.rows import read_jsonl

ROWS = [
    {"question": "Ann has 3 apples and buys 4. How many now?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "Café prices: 2 coffees at $3. Total?", "answer": "2 * 3 = 6\n#### 6"},
    {"question": "A line\u2028separator stays inside the string.", "answer": "#### 1,000"},
]
LINES = [json.dumps(row, ensure_ascii=False) for row in ROWS]

# How users' tools write the same three rows; each is read as datasets reads it (checked below, against datasets).
READABLE = {
    "utf8-bom": codecs.BOM_UTF8 + "\n".join(LINES).encode() + b"\n",
    "crlf": "\r\n".join(LINES).encode() + b"\r\n",
    "bare-cr": "\r".join(LINES).encode() + b"\r",
    "blank-and-space-lines": ("\n\n" + "\n   \n\t\n".join(LINES) + "\n\n\n").encode(),
    "trailing-whitespace": "".join(line + " \t \n" for line in LINES).encode(),
    "no-final-newline": "\n".join(LINES).encode(),
    "bom-crlf-blank": codecs.BOM_UTF8 + "\r\n\r\n".join(LINES).encode() + b"\r\n",
    "json-list": json.dumps(ROWS).encode(),
    "json-list-pretty-bom-crlf": codecs.BOM_UTF8 + json.dumps(ROWS, indent=2).replace("\n", "\r\n").encode(),
    # datasets' reader takes a stream of objects: pretty-printed ones, or several on a line
    "objects-over-lines": "\n".join(json.dumps(row, indent=2) for row in ROWS).encode(),
    "two-objects-on-a-line": (LINES[0] + " " + LINES[1] + "\n" + LINES[2] + "\n").encode(),
}


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(READABLE))
def test_gsm8k_files_as_tools_write_them_read_the_same_rows(case, tmp_path):
    examples = read_jsonl(_write(tmp_path, case, READABLE[case]))
    assert [(e.question, e.answer) for e in examples] == [(r["question"], r["answer"]) for r in ROWS]
    assert [reference_number(e.answer) for e in examples] == ["7", "6", "1000"]


@pytest.mark.slow
def test_what_we_read_is_what_the_datasets_json_loader_reads(tmp_path):
    """The premise, checked against the library itself: every variant above, and each refused one below."""
    import datasets

    datasets.disable_progress_bars()

    def load(path):
        return list(datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "c")))

    for case, data in READABLE.items():
        path = _write(tmp_path, case, data)
        assert load(path) == [{"question": e.question, "answer": e.answer} for e in read_jsonl(path)], case
    for case in ("utf16-bom", "nul-line", "ctrl-z-line", "comma-after-object", "unfinished-row", "single-quotes"):
        data, _, _ = UNREADABLE[case]
        with pytest.raises(Exception):  # noqa: B017, PT011 - datasets raises its own types; any refusal will do
            load(_write(tmp_path, case, data))
    # Windows-1252 bytes: datasets "loads" them and fails when a row is read.
    with pytest.raises(UnicodeDecodeError):
        load(_write(tmp_path, "cp1252", UNREADABLE["windows-1252"][0]))


UNREADABLE = {
    # case: (file bytes, line the error names, what the line must say: what is wrong and the fix)
    "utf16-bom": (
        "\n".join(LINES).encode("utf-16"),
        1,
        ["UTF-16 text (what Windows tools call 'Unicode'), not UTF-8", "save it as UTF-8"],
    ),
    "utf16-no-bom": ("\n".join(LINES).encode("utf-16-le"), 1, ["UTF-16 text without a byte-order mark"]),
    "windows-1252": (
        (LINES[0] + "\n" + LINES[1] + "\n").encode("cp1252"),
        2,
        ["not UTF-8 text", "byte 0xE9 is 'é' in Windows-1252", "save it as UTF-8"],
    ),
    "nul-line": (("\n".join(LINES) + "\n\x00\n").encode(), 4, ["a NUL byte, 0x00, at column 1: delete it"]),
    "ctrl-z-line": (("\n".join(LINES) + "\n\x1a").encode(), 4, ["MS-DOS end-of-file mark (Ctrl-Z), 0x1A", "delete it"]),
    "comma-after-object": (
        ",\n".join(LINES).encode(),
        1,
        ["malformed JSON", "a comma after the object: delete it"],
    ),
    "comma-inside-object": (
        (LINES[0] + "\n" + '{"question": "q", "answer": "#### 2",}' + "\n").encode(),
        2,
        ["a comma before the closing brace at column 38: delete it"],
    ),
    "unfinished-row": (
        (LINES[0] + '\n{"question": "Ava has", "answer": \n' + LINES[1] + "\n" + LINES[2] + "\n").encode(),
        2,
        ["the row that starts on this line does not parse (Expecting ',' delimiter at line 4, column 1)", "[{…}, {…}]"],
    ),
    "broken-inside-a-pretty-row": (
        (json.dumps(ROWS[0], indent=2) + "\n" + json.dumps(ROWS[1], indent=2).replace('",', '"', 1)).encode(),
        5,
        ["the row that starts on this line does not parse (Expecting ',' delimiter at line 7"],
    ),
    "single-quotes": (
        (LINES[0] + "\n{'question': 'q', 'answer': '#### 2'}\n").encode(),
        2,
        ["double quotes"],
    ),
    "list-comma-after-last-row": (
        json.dumps(ROWS, indent=2)[:-2].encode() + b",\n]",
        13,
        ["a comma after the last row of the list: delete it"],
    ),
    "list-comma-missing": (
        b"[\n" + LINES[0].encode() + b"\n" + LINES[1].encode() + b"\n]",
        3,
        ["a comma is missing between two rows"],
    ),
    "list-not-closed": (b"[\n" + LINES[0].encode() + b",\n", 3, ["the JSON list never closes: end it with ]"]),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_what_cannot_be_read_gets_one_line_with_file_line_and_fix(case, tmp_path):
    data, line_no, expected = UNREADABLE[case]
    path = _write(tmp_path, case, data)
    with pytest.raises(UserError) as err:
        read_jsonl(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line_no}: "), message
    assert "\n" not in message and "\r" not in message
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"


def test_row_errors_say_how_to_fix_the_row(tmp_path):
    cases = {
        '{"Question": "q", "Answer": "#### 2"}': ["missing 'question' text; its keys: 'Question', 'Answer'"],
        '{"question": "q", "answer": "42"}': ["no '#### <number>' final line; end the answer text with one"],
        '{"question": "q", "answer": "#### 2", "index": "7"}': ['write it as a number (7, not "7")'],
        '["q", "#### 2"]': ["expected a JSON object, got list; each row is a JSON object"],
    }
    for row, expected in cases.items():
        path = _write(tmp_path, "rows", f"{LINES[0]}\r\n\r\n{row}\r\n".encode())
        with pytest.raises(UserError) as err:
            read_jsonl(path)
        assert str(err.value).startswith(f"{path}:3: ") and all(p in str(err.value) for p in expected), err.value


def load_svamp(source: str):
    """A SVAMP-layout file read as the eval set `svamp` reads it."""
    return load_eval_set("svamp", EvalSetConfig(layout="svamp", source=source), parse_params({}))


SVAMP_ROWS = [
    {"ID": "chal-1", "Body": "Ann has 5 pens.", "Question": "How many?", "Equation": "5", "Answer": 5.0, "Type": "X"},
    {"ID": "chal-2", "Body": "", "Question": "Sum of 1,000 and 2?", "Equation": "", "Answer": " 1,002 ", "Type": "X"},
    {"ID": "chal-3", "Body": "B", "Question": "Cost?", "Equation": "", "Answer": "$2.50", "Type": "X"},
    {"ID": "chal-4", "Body": "C", "Question": "Count?", "Equation": "", "Answer": "7", "Type": "X"},
]


def test_svamp_as_a_windows_editor_or_a_spreadsheet_export_writes_it(tmp_path):
    pretty = codecs.BOM_UTF8 + json.dumps(SVAMP_ROWS, indent=4).replace("\n", "\r\n").encode()
    (tmp_path / "SVAMP.json").write_bytes(pretty)
    rows, _ = load_svamp(str(tmp_path / "SVAMP.json"))
    assert [r.number for r in rows] == ["5", "1002", "2.5", "7"]  # numbers written as text, as scoring reads them
    assert rows[1].question == "Sum of 1,000 and 2?"
    lines = "\r\n\r\n".join(json.dumps(r) for r in SVAMP_ROWS).encode() + b"\r\n"
    (tmp_path / "svamp.jsonl").write_bytes(codecs.BOM_UTF8 + lines)
    assert [r.number for r in load_svamp(str(tmp_path / "svamp.jsonl"))[0]] == [
        "5",
        "1002",
        "2.5",
        "7",
    ]


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"Answer": "2,5"},
            "'Answer' must be a number, got '2,5'; write it as a number (51, 2.5 or \"1,000\"; a decimal",
        ),
        ({"Answer": None}, "'Answer' must be a number, got None"),
        ({"Body": None}, 'an empty spreadsheet cell is null: write "" for an empty Body'),
        ({"Type": None, "type": "X"}, "Body, Question and Type must be text"),
    ],
)
def test_svamp_row_errors_name_the_line_the_row_starts_on_and_the_fix(change, expected, tmp_path):
    rows = [SVAMP_ROWS[0], {**SVAMP_ROWS[3], **change}]
    (tmp_path / "SVAMP.json").write_text(json.dumps(rows, indent=4).replace("\n", "\r\n"))
    with pytest.raises(UserError) as err:
        load_svamp(str(tmp_path / "SVAMP.json"))
    # indent=4: the first row takes lines 2-9, the second starts on line 10
    assert str(err.value).startswith(f"{tmp_path / 'SVAMP.json'}:10: ") and expected in str(err.value), err.value


def test_svamp_missing_keys_lists_the_keys_the_row_has(tmp_path):
    row = {k.lower(): v for k, v in SVAMP_ROWS[0].items()}
    (tmp_path / "SVAMP.json").write_text(json.dumps([row]))
    with pytest.raises(UserError) as err:
        load_svamp(str(tmp_path / "SVAMP.json"))
    assert "SVAMP.json:1: missing Body, Question, Answer, Type; its keys: 'id', 'body'" in str(err.value)
    assert '{"Body": "…", "Question": "…", "Answer": 5, "Type": "Addition"}' in str(err.value)


def test_svamp_utf16_is_refused_with_the_fix(tmp_path):
    (tmp_path / "SVAMP.json").write_bytes(json.dumps(SVAMP_ROWS).encode("utf-16"))
    with pytest.raises(UserError, match=r"SVAMP\.json:1: UTF-16 text .*save it as UTF-8"):
        load_svamp(str(tmp_path / "SVAMP.json"))
