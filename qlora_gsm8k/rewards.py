"""The rewards the rl stage trains on, scored exactly as the evaluation stages score an answer: the completion cut at
the first stop id and then at lm-eval's stop strings (completions.decode_answer), its '#### N' read by strict match
(answers.extract_strict). Pure functions of token ids: tested on crafted completions without a model.

Two terms, logged apart by TRL (rewards/answer/mean is the accuracy of the sampled completions as training goes):
- answer: 1 when the strict '#### N' number equals the question's, else 0. Strict, not flexible: strict match is the
  figure GSM8K is judged by, and a reward for "the last number in the text" pays for rambling that ends on the
  right number.
- format: 1 when the completion stopped with a stop id (the end-of-turn token) right after its '#### N' line. Not
  when it went on past the answer ("#### 5\nQuestion: ..."): evaluation cuts that at the stop string and scores it,
  but a model that rambles on spends its token budget and often never stops. Weighted by rl.format_reward (0.1):
  small beside a right answer, so a well-formatted wrong answer never outscores a right one, yet stopping stays
  paid for in groups where every answer is wrong (GRPO learns nothing from a group whose rewards are all equal)."""

from __future__ import annotations

import re

from .answers import extract_strict
from .completions import decode_answer
from .rows import normalize_number

# The last line of an answer holds the '#### N' line and nothing after it.
_ENDS_WITH_ANSWER = re.compile(r"####\s*-?[0-9.,]+\s*$")


def answer_reward(text: str, reference: str) -> float:
    strict = extract_strict(text)
    return 1.0 if strict is not None and strict == normalize_number(reference) else 0.0


def format_reward(text_before_stop: str | None) -> float:
    """`text_before_stop`: the completion up to its first stop id, None when it has none (it hit the token cap)."""
    return 1.0 if text_before_stop is not None and _ENDS_WITH_ANSWER.search(text_before_stop) else 0.0


class Gsm8kRewards:
    """The two reward functions in the form TRL's GRPOTrainer calls them (keyword arguments: completion_ids, and
    the dataset's `number` column), decoding each completion with the tokenizer and stop ids evaluation uses."""

    def __init__(self, tokenizer, stop_ids: list[int]):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)

    def evaluated_text(self, ids: list[int]) -> str:
        return decode_answer(self.tokenizer, list(ids), self.stop_ids).text

    def text_before_stop(self, ids: list[int]) -> str | None:
        end = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        return None if end is None else self.tokenizer.decode(list(ids[:end]), skip_special_tokens=True)

    def functions(self) -> list:
        def answer(completion_ids, number, **_):
            return [answer_reward(self.evaluated_text(ids), n) for ids, n in zip(completion_ids, number, strict=True)]

        def format(completion_ids, **_):  # noqa: A001 - TRL names the logged curve after the function
            return [format_reward(self.text_before_stop(ids)) for ids in completion_ids]

        return [answer, format]
