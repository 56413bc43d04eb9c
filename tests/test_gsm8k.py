"""GSM8K rows and answer extraction, scored like lm-evaluation-harness's gsm8k task."""

from __future__ import annotations

import json

import pytest

from qlora_gsm8k.answers import extract_flexible, extract_strict, is_correct, reference_number
from qlora_gsm8k.errors import UserError
from qlora_gsm8k.gsm8k import take_slice
from qlora_gsm8k.rows import clean_answer, has_final_number, normalize_number, parse_rows, read_jsonl, write_jsonl
from qlora_gsm8k.synthetic import make_rows

# (model output, strict-match number, flexible-extract number)
EXTRACTION_CASES = [
    ("The answer is 18.\n#### 18", "18", "18"),
    ("#### -5", "-5", "-5"),
    ("She lost 3 dollars.\n#### -3.5", "-3.5", "-3.5"),
    ("It costs $1,000.", None, "1000"),
    ("#### $1,000.", None, "1000"),  # strict needs a digit, '-', '.' or ',' right after '#### '
    ("#### 1,000.", "1000", "1000"),
    ("no number here", None, None),
    ("", None, None),
    ("#### 12\n#### 13", "12", "13"),  # strict: the first '####'; flexible: the last number
    ("first 4 then 5 then 6", None, "6"),
    ("7 apples", None, "7"),  # a single digit only matches the second alternative
    ("####12", None, "12"),  # strict needs the space after '####'
    ("#### 42 apples. Total 7", "42", "7"),
    ("#### 5..", "5.", "5."),  # the harness strips ONE trailing period
    ("#### .", None, None),  # no digits: not a number, never the empty string
    ("#### ,", None, None),
    ("Answer: 0.5", None, "0.5"),
    ("x is -0.25 ok", None, "-0.25"),
    ("ANSWER #### 3", "3", "3"),
]


@pytest.mark.parametrize(("output", "strict", "flexible"), EXTRACTION_CASES)
def test_extraction_matches_harness(output, strict, flexible):
    assert extract_strict(output) == strict
    assert extract_flexible(output) == flexible


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("1,000", "1000"), ("$1,000.", "1000"), ("72.", "72"), ("5..", "5."), ("-3.50", "-3.50"), (" 9 ", "9")],
)
def test_normalize_number(raw, normalized):
    assert normalize_number(raw) == normalized


def test_is_correct_compares_normalised_strings_only():
    assert is_correct("1000", reference_number("so\n#### 1,000"))
    assert not is_correct(None, "1000")
    # The harness compares strings: 5.0 is not 5.
    assert not is_correct("5.0", "5")


@pytest.mark.parametrize(
    ("answer", "number"),
    [("a\n#### 72", "72"), ("#### 1,234", "1234"), ("x\n#### -8", "-8"), ("#### 2.5", "2.5"), ("#### 30.", "30")],
)
def test_reference_number(answer, number):
    assert reference_number(answer) == number
    assert has_final_number(answer)


@pytest.mark.parametrize("answer", ["no final line", "#### ", "####", "#### .", "#### abc"])
def test_reference_number_without_number_raises(answer):
    with pytest.raises(ValueError, match="####"):
        reference_number(answer)


@pytest.mark.parametrize(
    "text", [output for output, _, _ in EXTRACTION_CASES] + ["#### ,.", "#### -", "#### ..", "a\n#### ,,5"]
)
def test_rows_and_scoring_agree_on_what_holds_a_final_number(text):
    """rows.py checks the layout when rows are read, scoring.py reads the number: a row that is read must score."""
    assert has_final_number(text) == (extract_strict(text) is not None)


def test_clean_answer_removes_calculator_annotations():
    assert clean_answer("2 * 3 = <<2*3=6>>6 apples\n#### 6") == "2 * 3 = 6 apples\n#### 6"


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"question": "How many?", "answer": "2 + 2 = 4\n#### 4"})


def test_read_jsonl_roundtrip_keeps_index(tmp_path):
    examples = parse_rows(make_rows(5, seed=3), "rows")
    assert [e.index for e in examples] == [0, 1, 2, 3, 4]
    picked = [examples[3], examples[1]]
    write_jsonl(picked, tmp_path / "slice.jsonl")
    assert read_jsonl(tmp_path / "slice.jsonl") == picked


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "q", "answer": ', "malformed JSON"),
        (json.dumps({"question": "q", "answer": "just 4"}), "'#### <number>'"),
        (json.dumps({"question": "q", "answer": "4\n#### "}), "'#### <number>'"),
        (json.dumps({"question": "q", "answer": "4\n#### ."}), "'#### <number>'"),
        (json.dumps({"question": "  ", "answer": "#### 4"}), "missing 'question'"),
        (json.dumps({"answer": "#### 4"}), "missing 'question'"),
        (json.dumps(["q", "#### 4"]), "expected a JSON object"),
        (json.dumps({"question": "q", "answer": "#### 4", "index": "7"}), "'index'"),
        (json.dumps({"question": "q", "answer": "#### 4", "index": True}), "'index'"),
    ],
)
def test_read_jsonl_error_names_file_and_line(tmp_path, bad_line, message):
    # Blank lines before the bad row must not shift the reported line number: it is line 5.
    path = _write_lines(tmp_path / "rows.jsonl", [GOOD, "", GOOD, "   ", bad_line, GOOD])
    with pytest.raises(UserError) as err:
        read_jsonl(path)
    assert f"{path}:5:" in str(err.value)
    assert message in str(err.value)


def test_read_jsonl_skips_blank_lines_and_counts_rows(tmp_path):
    path = _write_lines(tmp_path / "rows.jsonl", ["", GOOD, "", "", GOOD])
    examples = read_jsonl(path)
    assert [e.index for e in examples] == [0, 1]
    assert [reference_number(e.answer) for e in examples] == ["4", "4"]


def test_read_jsonl_unicode_line_separator_inside_a_string(tmp_path):
    # U+2028 is legal unescaped inside a JSON string; it must not split the row (str.splitlines would).
    row = '{"question": "a\u2028b", "answer": "#### 4"}'
    path = _write_lines(tmp_path / "rows.jsonl", [row, "{broken"])
    with pytest.raises(UserError, match=r"rows\.jsonl:2: malformed JSON"):
        read_jsonl(path)
    path.write_text(row + "\n", encoding="utf-8")
    assert read_jsonl(path)[0].question == "a\u2028b"


def test_read_jsonl_missing_and_empty(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="holds no rows"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_parse_rows_hub_style_where():
    with pytest.raises(UserError, match=r"^openai/gsm8k:train:2: "):
        parse_rows([{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "none"}], "openai/gsm8k:train")


def test_fixture_rows_parse(examples):
    assert len(examples) == 300
    assert all(reference_number(e.answer).lstrip("-").isdigit() for e in examples)
    assert all("<<" not in clean_answer(e.answer) for e in examples)


def test_take_slice_deterministic(examples):
    a = take_slice(examples, offset=10, size=20, seed=7, what="train")
    b = take_slice(examples, offset=10, size=20, seed=7, what="train")
    assert a == b
    assert len(a) == 20 and len({e.index for e in a}) == 20
    # seed 0 keeps the published order
    assert take_slice(examples, 10, 20, 0, "train") == examples[10:30]
    # another seed gives another slice
    assert take_slice(examples, 10, 20, 8, "train") != a
    # the shuffle does not touch the caller's list
    assert [e.index for e in examples] == list(range(len(examples)))


def test_take_slice_bounds(examples):
    assert len(take_slice(examples, len(examples) - 5, 5, 0, "eval_sets.gsm8k")) == 5
    with pytest.raises(
        UserError, match=r"eval_sets\.gsm8k\.offset \+ eval_sets\.gsm8k\.size = 301 exceeds the 300 rows"
    ):
        take_slice(examples, 296, 5, 0, "eval_sets.gsm8k")
    with pytest.raises(UserError, match=r"data\.train_offset"):
        take_slice(examples, 0, 301, 0, "train")


def test_non_utf8_input_names_the_line_not_a_byte_offset(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"question": "q", "answer": "#### 1"}).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"question": "caf\xe9", "answer": "#### 2"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:3: not UTF-8 text \(invalid continuation byte at byte \d+\)"):
        read_jsonl(path)
