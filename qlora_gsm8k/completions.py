"""A generated completion as lm-evaluation-harness reads it before scoring: cut at the first stop id, then at the first
stop string. Evaluation (generation.py) and the rl stage's reward (rewards.py) both cut completions here, so RL is
rewarded for exactly the text evaluation scores."""

from __future__ import annotations

from dataclasses import dataclass

from .prompts import cut_at_stop_strings


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    hit_token_cap: bool


def decode_answer(tokenizer, tokens: list[int], stop_ids: set[int]) -> Generation:
    """Cut at the first stop id, then at the first stop string, as lm-eval does before it scores."""
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    kept = tokens if end is None else tokens[:end]
    text, stopped_by_string = cut_at_stop_strings(tokenizer.decode(kept, skip_special_tokens=True))
    stopped = end is not None or stopped_by_string
    return Generation(text=text.strip(), new_tokens=len(kept) + int(end is not None), hit_token_cap=not stopped)
