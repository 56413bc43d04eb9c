"""Prompt-response encoding through the model's chat template, shared by training and evaluation.

Prompt and response are tokenized separately: the prompt exactly as generation will see it, the
response up to and including EOS. Labels are -100 on prompt and padding, token ids on the response."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gsm8k import Example, clean_answer

IGNORE_INDEX = -100
INSTRUCTION = "Solve the problem step by step. End with the final answer on its own line as '#### <number>'."


def user_message(question: str) -> str:
    return f"{question.strip()}\n\n{INSTRUCTION}"


def prompt_text(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message(question)}], tokenize=False, add_generation_prompt=True
    )


def response_text(tokenizer, example: Example) -> str:
    """The assistant turn as the template renders it after the prompt (EOS included by the template)."""
    messages = [{"role": "user", "content": user_message(example.question)}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": clean_answer(example.answer)}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("chat template does not render the prompt as a prefix of the conversation")
    return full[len(prompt) :]


def _encode_text(tokenizer, text: str) -> list[int]:
    # The template already holds any special tokens it wants; a second BOS must not sneak in.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, question: str) -> list[int]:
    ids = _encode_text(tokenizer, prompt_text(tokenizer, question))
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def encode_response(tokenizer, example: Example) -> list[int]:
    """Response ids ending with exactly one EOS (whatever the template puts after EOS is dropped)."""
    ids = _encode_text(tokenizer, response_text(tokenizer, example))
    eos = tokenizer.eos_token_id
    ids = ids[: ids.index(eos) + 1] if eos in ids else ids + [eos]
    return ids


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def response_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_example(tokenizer, example: Example, max_length: int | None) -> Encoded | None:
    """Prompt + response ids with prompt labels masked; None when it does not fit max_length
    (truncating would cut the answer and its EOS, teaching the model to ramble)."""
    prompt = encode_prompt(tokenizer, example.question)
    response = encode_response(tokenizer, example)
    if max_length is not None and len(prompt) + len(response) > max_length:
        return None
    return Encoded(input_ids=prompt + response, labels=[IGNORE_INDEX] * len(prompt) + response)


def encode_examples(tokenizer, examples: list[Example], max_length: int | None) -> tuple[list[Encoded], list[Example]]:
    """Encode all rows; returns the encodings and the examples they came from (rows longer than
    max_length are dropped from both)."""
    pairs = [(encode_example(tokenizer, e, max_length), e) for e in examples]
    kept = [(enc, e) for enc, e in pairs if enc is not None]
    return [enc for enc, _ in kept], [e for _, e in kept]


def pad_batch(
    rows: list[Encoded], pad_token_id: int, padding_side: str = "right", multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Pad to the longest row, rounded up to a multiple of `multiple`; padding gets attention 0 and label -100."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = -(-max(len(r.input_ids) for r in rows) // multiple) * multiple
    input_ids, labels, attention = [], [], []
    for row in rows:
        pad = width - len(row.input_ids)
        fill_ids, fill_labels, fill_mask = [pad_token_id] * pad, [IGNORE_INDEX] * pad, [0] * pad
        ones = [1] * len(row.input_ids)
        if padding_side == "right":
            input_ids.append(row.input_ids + fill_ids)
            labels.append(row.labels + fill_labels)
            attention.append(ones + fill_mask)
        else:
            input_ids.append(fill_ids + row.input_ids)
            labels.append(fill_labels + row.labels)
            attention.append(fill_mask + ones)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


class Collator:
    """Trainer data collator over `Encoded` rows (right padding for training)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [Encoded(input_ids=r["input_ids"], labels=r["labels"]) for r in rows]
        return pad_batch(encoded, self.pad_token_id, multiple=self.pad_to_multiple_of)
