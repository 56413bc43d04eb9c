"""Prompt/response encoding shared by training and evaluation (tiny tokenizer, real chat template)."""

from __future__ import annotations

import pytest
import torch

from qlora_gsm8k.modeling import load_tokenizer
from qlora_gsm8k.prompts import (
    IGNORE_INDEX,
    ChatFormat,
    Collator,
    Encoded,
    TemplateError,
    conversation_text,
    cut_at_stop_strings,
    encode_example,
    encode_examples,
    encode_prompt,
    end_of_turn_id,
    pad_batch,
    prompt_text,
    stop_token_ids,
    user_message,
)
from qlora_gsm8k.rows import clean_answer
from qlora_gsm8k.tiny import TINY_CHAT_TEMPLATE


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
    assert tok.eos_token not in conversation_text(tok, rows[0])
    enc = encode_example(tok, rows[0], None)
    assert enc.input_ids.count(tok.eos_token_id) == 1 and enc.labels[-1] == tok.eos_token_id


def test_template_that_does_not_prefix_the_prompt_is_refused(tiny_base_dir, rows):
    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT NOW:' }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="not a prefix") as err:
        encode_example(tok, rows[0], None)
    assert "ASSISTANT NOW" in str(err.value)  # names the template


# ChatML as SmolLM2 and Qwen2.5 ship it, with the tiny tokenizer's <s>/</s> in the roles of <|im_start|>/<|im_end|>:
# the BOS token opens every turn, and a default system prompt comes first.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ bos_token + 'system\nYou are a helpful assistant.' + eos_token + '\n' }}{% endif %}"
    "{{ bos_token + message['role'] + '\n' + message['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'assistant\n' }}{% endif %}"
)


@pytest.fixture
def chatml_tokenizer(tiny_base_dir):
    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = CHATML
    return tok


def test_chatml_keeps_the_bos_of_every_turn_and_adds_none(chatml_tokenizer, rows):
    tok = chatml_tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    for example in rows:
        enc = encode_example(tok, example, None)
        prompt = encode_prompt(tok, example.question)
        # system, user, assistant: three turns, each opened by the template's own BOS, none added on top
        assert enc.input_ids.count(bos) == 3 and enc.input_ids[:2] != [bos, bos]
        assert enc.input_ids[: len(prompt)] == prompt
        # the answer ends with the turn's end token; the newline the template puts after it is not supervised
        assert enc.labels[-1] == eos and enc.input_ids[-1] == eos
        assert enc.input_ids == tok(conversation_text(tok, example), add_special_tokens=False)["input_ids"][:-1]
        assert tok.decode(enc.input_ids[len(prompt) :], skip_special_tokens=True) == clean_answer(example.answer)


def _metaspace_tokenizer():
    """A SentencePiece-style tokenizer (Metaspace, as Llama-2's): a text alone starts with '▁', the same words
    inside a conversation, after a special token and a newline, do not."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from qlora_gsm8k.synthetic import make_rows
    from qlora_gsm8k.tiny import TINY_SPECIAL_TOKENS, wrap_tiny_tokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    corpus = [r["question"] + "\n" + r["answer"] for r in make_rows(500, seed=7)]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=TINY_SPECIAL_TOKENS))
    return wrap_tiny_tokenizer(backend)


def test_response_is_tokenized_as_part_of_the_conversation(rows):
    tok = _metaspace_tokenizer()
    example = rows[0]
    prompt = encode_prompt(tok, example.question)
    answer = clean_answer(example.answer)
    alone = tok(answer, add_special_tokens=False)["input_ids"]
    enc = encode_example(tok, example, None)
    response = enc.input_ids[len(prompt) : -1]
    # tokenized apart (the old encoding), the answer's first token differs from the conversation's
    assert alone[0] != response[0] and tok.convert_ids_to_tokens(alone[0]).startswith("▁")
    whole = tok(conversation_text(tok, example), add_special_tokens=False)["input_ids"]
    assert enc.input_ids == whole[: len(enc.input_ids)]
    assert enc.labels[len(prompt) :] == enc.input_ids[len(prompt) :]


def test_end_of_turn_and_stop_ids(chatml_tokenizer, tiny_tokenizer):
    from transformers import GenerationConfig

    assert end_of_turn_id(chatml_tokenizer) == chatml_tokenizer.eos_token_id
    # a generation config with a list of EOS ids keeps them all, plus the template's end of turn
    config = GenerationConfig(eos_token_id=[7, tiny_tokenizer.eos_token_id])
    assert stop_token_ids(tiny_tokenizer, config) == [7, tiny_tokenizer.eos_token_id]
    assert stop_token_ids(tiny_tokenizer, None) == [tiny_tokenizer.eos_token_id]
    assert ChatFormat.of(tiny_tokenizer).bos_id == tiny_tokenizer.bos_token_id  # Zephyr style: BOS from the tokenizer
    assert ChatFormat.of(chatml_tokenizer).bos_id == chatml_tokenizer.bos_token_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 5\n#### 5\n\nQuestion: next one? Answer: 7", ("so 5\n#### 5\n\n", True)),
        ("#### 5</s>more", ("#### 5", True)),
        ("#### 5<|im_end|>\n#### 9", ("#### 5", True)),
        ("#### 5 and on", ("#### 5 and on", False)),
    ],
)
def test_cut_at_stop_strings(text, expected):
    assert cut_at_stop_strings(text) == expected


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


# Llama-2's own template: the BOS rendered by the template at each user turn, no generation prompt, ' </s>' closing.
LLAMA2 = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def test_llama2_template_gets_exactly_its_own_bos(tiny_base_dir, rows):
    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = LLAMA2
    for example in rows:
        enc = encode_example(tok, example, None)
        prompt = encode_prompt(tok, example.question)
        assert enc.input_ids.count(tok.bos_token_id) == 1 and enc.input_ids[0] == tok.bos_token_id
        assert enc.input_ids[: len(prompt)] == prompt and tok.decode(prompt).endswith("[/INST]")
        assert enc.labels[-1] == tok.eos_token_id and enc.input_ids.count(tok.eos_token_id) == 1


def test_system_prompt_replaces_the_template_default_in_prompt_and_conversation(chatml_tokenizer, rows):
    """prompt.system: the same system message opens the prompt generation sees and the conversation training sees."""
    tok = chatml_tokenizer
    chat = ChatFormat.of(tok, "Answer with '#### <number>' and stop.")
    prompt = encode_prompt(tok, rows[0].question, chat)
    text = tok.decode(prompt)
    assert "Answer with '#### <number>' and stop." in text and "You are a helpful assistant." not in text
    enc = encode_example(tok, rows[0], None, chat)
    assert enc.input_ids[: len(prompt)] == prompt and enc.labels[len(prompt) - 1] == IGNORE_INDEX
    # None: no system message of ours, the template's default is kept
    assert "You are a helpful assistant." in tok.decode(encode_prompt(tok, rows[0].question, ChatFormat.of(tok)))
    encoded, _ = encode_examples(tok, rows, None, chat)
    assert encoded[0].input_ids == enc.input_ids


def test_template_that_refuses_a_system_message_names_the_param(tiny_base_dir, rows):
    from qlora_gsm8k.errors import UserError

    tok = load_tokenizer(tiny_base_dir)
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + TINY_CHAT_TEMPLATE
    )
    encode_prompt(tok, rows[0].question)  # no system message: fine
    with pytest.raises(UserError, match="refuses a system message.*System role not supported.*prompt.system=null"):
        encode_prompt(tok, rows[0].question, ChatFormat.of(tok, "Be brief."))
