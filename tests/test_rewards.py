"""The rl stage's reward on crafted completions: the answer term reads the strict '#### N' as evaluation does, and the
format term pays only for stopping right after it. Token ids from the tiny tokenizer, no model."""

from __future__ import annotations

import pytest

from qlora_gsm8k.errors import UserError
from qlora_gsm8k.prompts import ChatFormat, stop_token_ids
from qlora_gsm8k.reinforcement import prompt_rows, rl_questions
from qlora_gsm8k.rewards import Gsm8kRewards, answer_reward, format_reward
from qlora_gsm8k.rows import Example
from qlora_gsm8k.train_config import RLConfig


def test_answer_reward_is_the_strict_match_against_the_reference():
    assert answer_reward("3 + 4 = 7\n#### 7", "7") == 1.0
    assert answer_reward("#### 1,000", "1000") == 1.0
    assert answer_reward("3 + 4 = 8\n#### 8", "7") == 0.0
    # Flexible extraction would read 7 here; the reward, like the strict figure, does not.
    assert answer_reward("so the answer is 7", "7") == 0.0
    assert answer_reward("", "7") == 0.0


def test_format_reward_pays_only_for_stopping_right_after_the_answer_line():
    assert format_reward("3 + 4 = 7\n#### 7") == 1.0
    assert format_reward("3 + 4 = 7\n#### 7\n") == 1.0
    assert format_reward("#### 7\nQuestion: and then?") == 0.0
    assert format_reward("so the answer is 7") == 0.0
    assert format_reward(None) == 0.0  # no stop id: it hit the token cap


@pytest.fixture
def rewards(tiny_tokenizer):
    stop_ids = stop_token_ids(tiny_tokenizer)
    return Gsm8kRewards(tiny_tokenizer, stop_ids), stop_ids[0]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_crafted_completions_score_as_evaluation_reads_them(rewards, tiny_tokenizer):
    scorer, stop = rewards
    answer, fmt = scorer.functions()
    completions = {
        "right, stopped": _ids(tiny_tokenizer, "2 + 5 = 7\n#### 7") + [stop],
        "wrong, stopped": _ids(tiny_tokenizer, "2 + 5 = 8\n#### 8") + [stop],
        "no answer line": _ids(tiny_tokenizer, "it is 7") + [stop],
        # Evaluation cuts at the stop string "Question:" and scores the answer before it; stopping is not paid.
        "right, then rambling": _ids(tiny_tokenizer, "#### 7\nQuestion: what is 2 + 2?") + [stop],
        "right, never stopped": _ids(tiny_tokenizer, "2 + 5 = 7\n#### 7"),
        "right, then padding after the stop": _ids(tiny_tokenizer, "#### 7") + [stop, stop, stop],
    }
    ids = list(completions.values())
    numbers = ["7"] * len(ids)
    scored = zip(answer(completion_ids=ids, number=numbers), fmt(completion_ids=ids), strict=True)
    got = dict(zip(completions, scored, strict=True))
    assert got == {
        "right, stopped": (1.0, 1.0),
        "wrong, stopped": (0.0, 1.0),
        "no answer line": (0.0, 0.0),
        "right, then rambling": (1.0, 0.0),
        "right, never stopped": (1.0, 0.0),
        "right, then padding after the stop": (1.0, 1.0),
    }


def test_prompt_rows_hold_evaluation_prompts_and_reference_numbers(tiny_tokenizer):
    chat = ChatFormat.of(tiny_tokenizer)
    examples = [
        Example(index=i, question=f"What is {i} + 1?", answer=f"{i} + 1 = {i + 1}\n#### {i + 1}") for i in range(3)
    ]
    rows = prompt_rows(tiny_tokenizer, examples, chat)
    assert [r["number"] for r in rows] == ["1", "2", "3"]
    # As TRL tokenizes a text prompt (the tokenizer's special tokens added): the ids generation feeds evaluation.
    from qlora_gsm8k.prompts import encode_prompt

    assert tiny_tokenizer(rows[1]["prompt"])["input_ids"] == encode_prompt(tiny_tokenizer, "What is 1 + 1?", chat)


def test_rl_questions_come_from_the_train_slice_and_say_when_it_is_short():
    examples = [Example(index=i, question=f"q{i}", answer=f"#### {i}") for i in range(10)]
    chosen = rl_questions(RLConfig(questions=4, offset=3), examples)
    assert [e.index for e in chosen] == [3, 4, 5, 6]
    with pytest.raises(UserError, match="rl.questions=8 from rl.offset=5: the train slice holds 10 rows"):
        rl_questions(RLConfig(questions=8, offset=5), examples)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"group_size": 1}, "rl.group_size must be >= 2"),
        ({"questions_per_step": 3, "group_size": 4, "micro_batch_size": 8}, "12 completions a step"),
        ({"group_size": 6, "questions_per_step": 4, "micro_batch_size": 8}, "one must divide the other"),
        ({"temperature": 0.0}, "rl.temperature must be > 0"),
        ({"learning_rate": 0.0}, "rl.learning_rate must be > 0"),
    ],
)
def test_rl_params_are_refused_with_the_key_named(settings, message):
    with pytest.raises(UserError, match=message):
        RLConfig(**settings).validate()


def test_rl_refuses_methods_outside_the_lora_family_with_one_line():
    import dataclasses

    from qlora_gsm8k.config import DataConfig, Params
    from qlora_gsm8k.train_config import PeftMethodConfig

    on = Params(data=DataConfig(train_size=200), rl=RLConfig(enabled=True, questions=8))
    on.validate()  # lora, the default
    dataclasses.replace(on, peft=PeftMethodConfig(method="ia3"), rl=RLConfig(enabled=False)).validate()
    with pytest.raises(UserError, match="peft.method=ia3 is not one of them"):
        dataclasses.replace(on, peft=PeftMethodConfig(method="ia3")).validate()


def test_rl_questions_beyond_the_train_slice_fail_the_params_check():
    from qlora_gsm8k.config import DataConfig, Params

    Params(data=DataConfig(train_size=200), rl=RLConfig(enabled=False, questions=500)).validate()  # off: not read
    with pytest.raises(UserError, match=r"rl.questions=150 from rl.offset=60 need 210 train rows; data.train_size=200"):
        Params(data=DataConfig(train_size=200), rl=RLConfig(enabled=True, questions=150, offset=60)).validate()
