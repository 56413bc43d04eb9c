"""Batched greedy generation as lm-evaluation-harness runs gsm8k (left padding, every EOS id of the model, its stop
strings, the text cut there), and answers scored (scoring.py). Imported by the evaluation stages only: the merge
stage never depends on it."""

from __future__ import annotations

import contextlib

import torch

from .completions import Generation, decode_answer
from .context import check_fits_context, model_context
from .progress import progress
from .prompts import STOP_STRINGS, ChatFormat, encode_prompt, stop_token_ids
from .rows import Example
from .scoring import score_generations


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def longest_first(rows: list, length) -> list[int]:
    """Indices sorted longest first: batches of similar length waste little padding."""
    return sorted(range(len(rows)), key=lambda i: -length(rows[i]))


def greedy_config(tokenizer, stop_ids: list[int], max_new_tokens: int):
    """Greedy decoding pinned in full: nothing left for a model's generation_config.json to fill in (a
    repetition_penalty there would change every answer), every EOS id of the model, lm-eval's stop strings."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=list(STOP_STRINGS),
    )


@contextlib.contextmanager
def _without_model_generation_defaults(model):
    """generate() fills every setting left unset from the model's own generation config; set it aside."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


@torch.no_grad()
def generate_answers(
    model, tokenizer, questions: list[str], batch_size: int, max_new_tokens: int, chat: ChatFormat | None = None
):
    """Greedy, batched, left-padded generation that stops at every EOS id of the model and at lm-eval's stop
    strings; returns results in input order. Progress counts questions."""
    chat = chat or ChatFormat.of(tokenizer)
    prompts = [encode_prompt(tokenizer, q, chat) for q in questions]
    check_fits_context(
        model_context(model),
        [len(p) + max_new_tokens for p in prompts],
        f"prompt + eval.max_new_tokens={max_new_tokens}",
    )
    order = longest_first(prompts, len)
    results: list[Generation | None] = [None] * len(prompts)
    model.eval()
    dev = next(model.parameters()).device
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    stop_set = set(stop_ids)
    config = greedy_config(tokenizer, stop_ids, max_new_tokens)
    pad_id = tokenizer.pad_token_id
    with (
        progress(total=len(prompts), desc="generate", unit="question") as shown,
        _without_model_generation_defaults(model),
    ):
        for batch_idx in batches(order, batch_size):
            width = max(len(prompts[i]) for i in batch_idx)
            ids = torch.full((len(batch_idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch_idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), generation_config=config, tokenizer=tokenizer
            )
            new = out[:, width:].cpu()
            for row, i in enumerate(batch_idx):
                # A row that stopped is padded after its stop; one that never stopped holds no padding.
                results[i] = decode_answer(tokenizer, new[row].tolist(), stop_set)
            shown.update(len(batch_idx))
    return results


def answer_and_score(model, tokenizer, examples: list[Example], params, chat=None) -> tuple[list[dict], dict]:
    """Greedy answers to `examples`' questions scored GSM8K-style (any set whose answers are one number)."""
    chat = chat or ChatFormat.of(tokenizer, params.prompt.system)
    cfg = params.eval
    generations = generate_answers(
        model, tokenizer, [e.question for e in examples], cfg.generation_batch_size, cfg.max_new_tokens, chat
    )
    return score_generations(examples, generations)
