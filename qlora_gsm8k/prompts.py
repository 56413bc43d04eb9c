"""Facts about chat templates and tokens, and the prompt-response encoding shared by training and evaluation.

A row is tokenized once, as the whole conversation the chat template renders; the prompt is masked by
position. Tokenizing prompt and response apart gives a sequence the model never sees at generation time:
SentencePiece tokenizers (Llama-2, TinyLlama) start a text alone with `▁Jan` but continue a prompt with `Jan`.
The prompt generation feeds the model must therefore be a prefix of the conversation's ids; that is checked.

Templates as real models ship them: ChatML (SmolLM2, Qwen2.5) renders its BOS-like `<|im_start|>` at every
turn; Zephyr/Llama-2 style templates render none and leave the one BOS to the tokenizer; some add a default
system prompt. The rule is the same for all: keep what the template renders and add a BOS only where the
tokenizer would add one to plain text and the template did not render it. Labels are the response up to
and including the token the template closes the assistant turn with (`</s>`, `<|im_end|>`), which must be
one of the ids generation stops at."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .rows import Example, clean_answer

IGNORE_INDEX = -100
INSTRUCTION = "Solve the problem step by step. End with the final answer on its own line as '#### <number>'."
# lm-evaluation-harness gsm8k's `until`: generation stops there and the text is cut before scoring.
STOP_STRINGS = ("Question:", "</s>", "<|im_end|>")
_PROBE_ANSWER = "QLORA_GSM8K_PROBE_ANSWER"


def user_message(question: str) -> str:
    return f"{question.strip()}\n\n{INSTRUCTION}"


def _messages(question: str, answer: str | None = None, system: str | None = None) -> list[dict]:
    # No system message unless asked for: the template then renders its own default (SmolLM2 has one).
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_message(question)})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat template; use a chat model (or add a chat_template to it)")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # noqa: BLE001 - jinja's TemplateError and the template's own raise_exception
        if messages[0]["role"] != "system":
            raise
        raise UserError(
            f"the chat template refuses a system message ({type(err).__name__}: {err}); unset prompt.system "
            "for this model (-S prompt.system=null)"
        ) from None


def prompt_text(tokenizer, question: str, system: str | None = None) -> str:
    return _render(tokenizer, _messages(question, system=system), add_generation_prompt=True)


def conversation_text(tokenizer, example: Example, system: str | None = None) -> str:
    messages = _messages(example.question, clean_answer(example.answer), system)
    return _render(tokenizer, messages, add_generation_prompt=False)


def bos_to_add(tokenizer) -> int | None:
    """The BOS id the tokenizer puts before plain text (Llama-2, TinyLlama), or None (ChatML models, GPT-2 style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("1", add_special_tokens=True)["input_ids"]
    return bos if ids[:1] == [bos] else None


def end_of_turn_id(tokenizer) -> int:
    """The special token the chat template closes an assistant turn with: what the model learns to stop with."""
    text = _render(tokenizer, _messages("1", _PROBE_ANSWER), add_generation_prompt=False)
    after = text[text.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER) :]
    # Registered special tokens and added ones flagged special: a GGUF tokenizer may register only a wrong EOS.
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            return token
    # A template that closes turns with plain text: the model learns to stop with the tokenizer's EOS.
    if tokenizer.eos_token_id is None:
        raise UserError("the chat template closes assistant turns with no special token and the tokenizer has no EOS")
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id generation stops at: the model's EOS ids (a list in many generation configs), the tokenizer's
    EOS and the template's end of turn."""
    ids = []
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    for token in [*(configured or []), tokenizer.eos_token_id, end_of_turn_id(tokenizer)]:
        if token is not None and token not in ids:
            ids.append(token)
    return ids


@dataclass(frozen=True)
class ChatFormat:
    """What encoding needs to know about one tokenizer's template, worked out once per tokenizer, and the system
    message (prompt.system) every conversation starts with: training and evaluation must use the same."""

    bos_id: int | None
    end_of_turn_id: int
    system: str | None = None

    @classmethod
    def of(cls, tokenizer, system: str | None = None) -> ChatFormat:
        return cls(bos_id=bos_to_add(tokenizer), end_of_turn_id=end_of_turn_id(tokenizer), system=system)

    def ids(self, tokenizer, text: str) -> list[int]:
        # The template already holds the special tokens it wants; only a BOS it leaves to the tokenizer is added.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids


def encode_prompt(tokenizer, question: str, chat: ChatFormat | None = None) -> list[int]:
    """The prompt exactly as generation feeds it to the model."""
    chat = chat or ChatFormat.of(tokenizer)
    return chat.ids(tokenizer, prompt_text(tokenizer, question, chat.system))


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def response_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class TemplateError(UserError):
    pass


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def encode_conversation(tokenizer, example: Example, chat: ChatFormat | None = None) -> tuple[list[int], int]:
    """The conversation's ids, cut after the end-of-turn token that closes the answer, and the prompt's length."""
    chat = chat or ChatFormat.of(tokenizer)
    prompt = encode_prompt(tokenizer, example.question, chat)
    full = chat.ids(tokenizer, conversation_text(tokenizer, example, chat.system))
    if full[: len(prompt)] != prompt:
        at = _first_difference(prompt, full)
        raise TemplateError(
            f"the generation prompt's ids are not a prefix of the conversation's ids "
            f"(row {example.index}, token {at}: prompt {tokenizer.decode(prompt[at : at + 3])!r}, conversation "
            f"{tokenizer.decode(full[at : at + 3])!r}), so training would see a prompt generation never shows the "
            f"model. Template: {tokenizer.chat_template[:200]!r}"
        )
    if chat.end_of_turn_id not in full[len(prompt) :]:
        # A template that closes turns with plain text only: the EOS that teaches stopping is appended.
        return full + [chat.end_of_turn_id], len(prompt)
    # What the template renders after the end of turn (a newline in ChatML) is never generated: not supervised.
    return full[: full.index(chat.end_of_turn_id, len(prompt)) + 1], len(prompt)


def encode_example(tokenizer, example: Example, max_length: int | None, chat: ChatFormat | None = None):
    """Conversation ids with the prompt's labels masked by position; None when longer than max_length
    (truncating would cut the answer and its end of turn, teaching the model to ramble)."""
    ids, n_prompt = encode_conversation(tokenizer, example, chat)
    if max_length is not None and len(ids) > max_length:
        return None
    return Encoded(input_ids=ids, labels=[IGNORE_INDEX] * n_prompt + ids[n_prompt:])


def encode_examples(
    tokenizer, examples: list[Example], max_length: int | None, chat: ChatFormat | None = None
) -> tuple[list[Encoded], list[Example]]:
    """Encode all rows; returns the encodings and the examples they came from (rows longer than
    max_length are dropped from both)."""
    chat = chat or ChatFormat.of(tokenizer)
    pairs = [(encode_example(tokenizer, e, max_length, chat), e) for e in examples]
    kept = [(enc, e) for enc, e in pairs if enc is not None]
    return [enc for enc, _ in kept], [e for _, e in kept]


def cut_at_stop_strings(text: str) -> tuple[str, bool]:
    """The text before the first stop string (lm-eval cuts there before scoring), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in STOP_STRINGS) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def padded_length(length: int, multiple: int) -> int:
    """A row's length once padded up to a multiple of `multiple` (what pad_batch makes every row of a batch)."""
    return -(-length // multiple) * multiple


def pad_batch(
    rows: list[Encoded], pad_token_id: int, padding_side: str = "right", multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Pad to the longest row, rounded up to a multiple of `multiple`; padding gets attention 0 and label -100."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = padded_length(max(len(r.input_ids) for r in rows), multiple)
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
