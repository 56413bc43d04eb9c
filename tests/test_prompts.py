"""Prompt/response encoding shared by training and evaluation (tiny tokenizer, real chat template)."""

from __future__ import annotations

import pytest
import torch

from qlora_gsm8k.gsm8k import clean_answer
from qlora_gsm8k.modeling import TINY_CHAT_TEMPLATE, load_tokenizer
from qlora_gsm8k.prompts import (
    IGNORE_INDEX,
    Collator,
    Encoded,
    encode_example,
    encode_examples,
    encode_prompt,
    encode_response,
    pad_batch,
    prompt_text,
    response_text,
    user_message,
)


@pytest.fixture
def rows(examples):
    return examples[:6]


def test_pad_is_distinct_from_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token_id != tok.eos_token_id


def test_training_prompt_is_the_generation_prompt(tiny_tokenizer, rows):
    tok = tiny_tokenizer
    for example in rows:
        prompt = encode_prompt(tok, example.question)
        # What generation feeds the model: the chat template with the generation prompt, tokenized by it.
        templated = tok.apply_chat_template(
            [{"role": "user", "content": user_message(example.question)}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
        # The tiny template (like TinyLlama's) renders no BOS; the tokenizer's own BOS goes first, once.
        assert prompt == [tok.bos_token_id] + list(templated)
        assert prompt == tok(prompt_text(tok, example.question))["input_ids"]
        enc = encode_example(tok, example, max_length=None)
        assert enc.input_ids[: len(prompt)] == prompt
        assert tok.decode(prompt).endswith("<|assistant|>\n")


def test_one_bos_labels_and_one_supervised_eos(tiny_tokenizer, rows):
    tok = tiny_tokenizer
    for example in rows:
        enc = encode_example(tok, example, max_length=None)
        prompt = encode_prompt(tok, example.question)
        response = enc.input_ids[len(prompt) :]
        assert len(enc.input_ids) == len(enc.labels)
        assert enc.input_ids[0] == tok.bos_token_id
        assert enc.input_ids.count(tok.bos_token_id) == 1
        assert enc.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert enc.labels[len(prompt) :] == response
        assert enc.response_tokens == len(response) > 1
        # exactly one EOS in the response, at the end, supervised
        assert response.count(tok.eos_token_id) == 1
        assert response[-1] == tok.eos_token_id
        assert enc.labels[-1] == tok.eos_token_id
        # the response is the cleaned reference answer (no calculator annotations), nothing after EOS
        assert tok.decode(response, skip_special_tokens=True) == clean_answer(example.answer)
        assert "<<" not in tok.decode(response)
        assert encode_response(tok, example) == response


def test_template_with_bos_in_text_still_gives_one_bos(tiny_base_dir, rows):
    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = "{{ bos_token }}" + TINY_CHAT_TEMPLATE
    prompt = encode_prompt(tok, rows[0].question)
    assert prompt.count(tok.bos_token_id) == 1 and prompt[0] == tok.bos_token_id
    enc = encode_example(tok, rows[0], None)
    assert enc.input_ids.count(tok.bos_token_id) == 1


def test_template_without_eos_after_answer_gets_one_appended(tiny_base_dir, rows):
    tok = load_tokenizer(tiny_base_dir)
    # assistant turns end with a newline only: the encoder must add the EOS that teaches stopping
    template = TINY_CHAT_TEMPLATE.replace("+ eos_token ", "")
    assert template != TINY_CHAT_TEMPLATE
    tok.chat_template = template
    assert tok.eos_token not in response_text(tok, rows[0])
    response = encode_response(tok, rows[0])
    assert response.count(tok.eos_token_id) == 1 and response[-1] == tok.eos_token_id


def test_template_that_does_not_prefix_the_prompt_is_refused(tiny_base_dir, rows):
    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT NOW:' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix"):
        response_text(tok, rows[0])


def test_rows_longer_than_max_length_are_dropped_not_truncated(tiny_tokenizer, rows):
    tok = tiny_tokenizer
    full = [encode_example(tok, e, None) for e in rows]
    lengths = [len(e.input_ids) for e in full]
    limit = sorted(lengths)[len(lengths) // 2]
    # exactly at the limit: kept whole
    at_limit = rows[lengths.index(limit)]
    assert encode_example(tok, at_limit, limit) == full[lengths.index(limit)]
    assert encode_example(tok, at_limit, limit - 1) is None
    encoded, kept = encode_examples(tok, rows, limit)
    assert [e.index for e in kept] == [e.index for e, n in zip(rows, lengths, strict=True) if n <= limit]
    assert 0 < len(kept) < len(rows)
    for enc, example in zip(encoded, kept, strict=True):
        assert enc == encode_example(tok, example, None)  # not truncated
        assert enc.labels[-1] == tok.eos_token_id
    assert encode_examples(tok, rows, None)[0] == full


def _rows():
    return [
        Encoded(input_ids=[1, 10, 11, 12, 2], labels=[IGNORE_INDEX, IGNORE_INDEX, 11, 12, 2]),
        Encoded(input_ids=[1, 20, 2], labels=[IGNORE_INDEX, 20, 2]),
    ]


def test_pad_batch_right():
    batch = pad_batch(_rows(), pad_token_id=3)
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 2], [1, 20, 2, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 11, 12, 2], [-100, 20, 2, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_batch_left():
    batch = pad_batch(_rows(), pad_token_id=3, padding_side="left")
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 2], [3, 3, 1, 20, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 11, 12, 2], [-100, -100, -100, 20, 2]]


def test_pad_batch_rounds_the_width_up_to_a_multiple():
    batch = pad_batch(_rows(), pad_token_id=3, multiple=4)
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 2, 3, 3, 3], [1, 20, 2, 3, 3, 3, 3, 3]]
    assert batch["labels"][0].tolist() == [-100, -100, 11, 12, 2, -100, -100, -100]
    assert batch["attention_mask"].sum().item() == 8
    assert pad_batch(_rows(), pad_token_id=3, multiple=5)["input_ids"].shape == (2, 5)  # already a multiple


def test_pad_batch_rejects_unknown_side():
    with pytest.raises(ValueError, match="padding_side"):
        pad_batch(_rows(), pad_token_id=3, padding_side="middle")


def test_collator_pads_right_with_masked_labels(tiny_tokenizer, rows):
    tok = tiny_tokenizer
    encoded = [encode_example(tok, e, None) for e in rows[:3]]
    batch = Collator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    for row, enc in enumerate(encoded):
        n = len(enc.input_ids)
        assert batch["input_ids"][row, :n].tolist() == enc.input_ids
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == n
        # EOS stays supervised although padding follows it
        assert batch["labels"][row, n - 1] == tok.eos_token_id
