"""The number an output answers with, read as lm-evaluation-harness reads gsm8k outputs (strict-match and
flexible-extract), and whether it is right. Evaluation (scoring.py) and the rl stage's reward (rewards.py) both read
answers here: an edit here re-runs both, an edit to how evaluation summarises (scoring.py) re-runs no RL."""

from __future__ import annotations

import re

from .rows import final_number, normalize_number

# lm-evaluation-harness gsm8k: strict-match takes the first "#### number";
# flexible-extract takes the last number-looking span of the output.
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


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
    """A GSM8K answer's reference number (rows.final_number; kept here for scoring's readers)."""
    return final_number(answer)


def is_correct(predicted: str | None, reference: str) -> bool:
    return predicted is not None and predicted == reference
