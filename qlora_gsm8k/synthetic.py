"""Synthetic rows, made in code (GSM8K format, and SVAMP and plain eval layouts from them): test fixtures and the
tiny tokenizer's training text."""

from __future__ import annotations

import json
import random
from pathlib import Path

_NAMES = ["Ava", "Ben", "Carla", "Dev", "Elif", "Farid", "Gus", "Hana", "Ivo", "June", "Kofi", "Lena"]
_ITEMS = ["apples", "pencils", "stickers", "cookies", "marbles", "books", "shells", "cards"]


def make_row(rng: random.Random) -> dict:
    """One word problem with a worked answer, calculator annotations and a '#### N' final line."""
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    have, bought, price = rng.randint(2, 60), rng.randint(2, 40), rng.randint(1, 9)
    total = have + bought
    cost = bought * price
    kind = rng.randrange(3)
    if kind == 0:
        question = (
            f"{name} has {have} {item}. {name} buys {bought} more {item} from {friend}. "
            f"How many {item} does {name} have now?"
        )
        answer = f"{name} has {have} + {bought} = <<{have}+{bought}={total}>>{total} {item}.\n#### {total}"
    elif kind == 1:
        question = f"{name} buys {bought} {item} at ${price} each. How many dollars does {name} spend?"
        answer = f"{name} spends {bought} * {price} = <<{bought}*{price}={cost}>>{cost} dollars.\n#### {cost}"
    else:
        gives = rng.randint(1, have)
        left = have - gives
        question = f"{name} had {have} {item} and gave {gives} of them to {friend}. How many {item} are left?"
        answer = f"{name} has {have} - {gives} = <<{have}-{gives}={left}>>{left} {item} left.\n#### {left}"
    return {"question": question, "answer": answer}


def make_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_row(rng) for _ in range(count)]


def write_dataset_dir(root: str | Path, train_rows: int = 300, test_rows: int = 150, seed: int = 0) -> Path:
    """Write train.jsonl and test.jsonl in the openai/grade-school-math layout."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, count, offset in (("train", train_rows, 0), ("test", test_rows, 1)):
        rows = make_rows(count, seed * 2 + offset)
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_svamp_rows(count: int, seed: int) -> list[dict]:
    """Rows in the published SVAMP.json layout (float answers, four problem types), from the same generator."""
    rng = random.Random(seed)
    types = ["Addition", "Multiplication", "Subtraction"]
    rows = []
    for position in range(count):
        row = make_row(rng)
        body, _, question = row["question"].rpartition(". ")
        number = float(row["answer"].rsplit("#### ", 1)[1])
        kind = types[["+", "*", "-"].index(next(op for op in "+*-" if f" {op} " in row["answer"]))]
        rows.append(
            {
                "ID": f"chal-{position + 1}",
                "Body": body,
                "Question": question,
                "Equation": "",
                "Answer": number,
                "Type": kind,
            }
        )
    return rows


def write_svamp_file(path: str | Path, count: int = 40, seed: int = 0) -> Path:
    path = Path(path)
    path.write_text(json.dumps(make_svamp_rows(count, seed), indent=1))
    return path


def write_plain_file(path: str | Path, count: int = 40, seed: int = 0) -> Path:
    """Rows in the plain eval layout: JSON lines with "question" and a numeric "answer" (what a user's own set is)."""
    rows = []
    for row in make_rows(count, seed):
        rows.append({"question": row["question"], "answer": int(row["answer"].rsplit("#### ", 1)[1])})
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
