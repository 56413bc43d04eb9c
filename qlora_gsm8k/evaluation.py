"""Evaluation: response-token perplexity, batched greedy generation, GSM8K scoring, generation health and the
merge check. Every number is defined once here (the paired statistics in `paired`)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .context import check_fits_context, model_context
from .errors import UserError
from .gsm8k import Example, extract_flexible, extract_strict, is_correct
from .progress import progress
from .prompts import (
    IGNORE_INDEX,
    STOP_STRINGS,
    ChatFormat,
    cut_at_stop_strings,
    encode_examples,
    encode_prompt,
    pad_batch,
    stop_token_ids,
)


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _by_length(rows: list, length) -> list[int]:
    """Indices sorted longest first: batches of similar length waste little padding."""
    return sorted(range(len(rows)), key=lambda i: -length(rows[i]))


def _row_logits(output, batch) -> torch.Tensor:
    """Logits at the batch's own positions: prompt tuning (peft.method=prompt) puts its virtual tokens first."""
    return output.logits[:, -batch["input_ids"].shape[1] :]


@torch.no_grad()
def response_nll(
    model, tokenizer, examples: list[Example], batch_size: int, max_length: int | None = None, chat=None
) -> dict:
    """Sum of next-token NLL over response tokens (given the prompt) and their count.

    Padding and prompt carry label -100; logits at position t predict token t+1. The total is
    summed, never averaged per batch, so any batch size gives the same perplexity."""
    encoded, kept = encode_examples(tokenizer, examples, max_length, chat)
    check_fits_context(model_context(model), [len(e.input_ids) for e in encoded], "question + reference answer")
    if not encoded:
        # exp(0 / 0 tokens) would report a perfect perplexity of 1.0 for nothing scored.
        raise UserError(f"no rows to score: {len(examples)} given, all longer than max_length={max_length}")
    order = _by_length(encoded, lambda e: len(e.input_ids))
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    per_sample_ppl = []
    model.eval()
    dev = next(model.parameters()).device
    for batch_idx in progress(_batches(order, batch_size), desc="perplexity", unit="batch"):
        batch = pad_batch([encoded[i] for i in batch_idx], tokenizer.pad_token_id)
        batch = {k: v.to(dev) for k, v in batch.items()}
        logits = _row_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch)
        shift_logits = logits[:, :-1].float()
        shift_labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(shift_labels.shape)
        mask = shift_labels != IGNORE_INDEX
        sample_nll = (nll * mask).sum(dim=1).double().cpu()
        sample_tokens = mask.sum(dim=1).cpu()
        total_nll += sample_nll.sum()
        total_tokens += int(sample_tokens.sum())
        per_sample_ppl += torch.exp(sample_nll / sample_tokens.clamp(min=1)).tolist()
    mean_nll = float(total_nll) / max(total_tokens, 1)
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "tokens": total_tokens,
        "examples": len(encoded),
        "dropped_too_long": len(examples) - len(kept),
        # Labelled as what it is: a mean of per-sample perplexities, NOT the corpus perplexity.
        "mean_per_sample_perplexity": sum(per_sample_ppl) / max(len(per_sample_ppl), 1),
    }


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    hit_token_cap: bool


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


def _decode_answer(tokenizer, tokens: list[int], stop_ids: set[int]) -> Generation:
    """Cut at the first stop id, then at the first stop string, as lm-eval does before it scores."""
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    kept = tokens if end is None else tokens[:end]
    text, stopped_by_string = cut_at_stop_strings(tokenizer.decode(kept, skip_special_tokens=True))
    stopped = end is not None or stopped_by_string
    return Generation(text=text.strip(), new_tokens=len(kept) + int(end is not None), hit_token_cap=not stopped)


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
    order = _by_length(prompts, len)
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
        for batch_idx in _batches(order, batch_size):
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
                results[i] = _decode_answer(tokenizer, new[row].tolist(), stop_set)
            shown.update(len(batch_idx))
    return results


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same output (0 = none)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def score_generations(examples: list[Example], generations: list[Generation]) -> tuple[list[dict], dict]:
    """Per-row records and summary: exact match (strict/flexible), format gap and health."""
    rows = []
    for example, gen in zip(examples, generations, strict=True):
        strict, flexible = extract_strict(gen.text), extract_flexible(gen.text)
        reference = example.number
        rows.append(
            {
                "index": example.index,
                "output": gen.text,
                "number_strict": strict,
                "number_flexible": flexible,
                "correct_strict": is_correct(strict, reference),
                "correct_flexible": is_correct(flexible, reference),
                "new_tokens": gen.new_tokens,
                "hit_token_cap": gen.hit_token_cap,
                "repetition_rate": repetition_rate(gen.text),
            }
        )
    n = max(len(rows), 1)
    strict_acc = sum(r["correct_strict"] for r in rows) / n
    flexible_acc = sum(r["correct_flexible"] for r in rows) / n
    summary = {
        "exact_match_strict": strict_acc,
        "exact_match_flexible": flexible_acc,
        # How much accuracy is lost only to answer format (no '#### N' line).
        "format_gap": flexible_acc - strict_acc,
        "format_compliance": sum(r["number_strict"] is not None for r in rows) / n,
        "hit_token_cap_rate": sum(r["hit_token_cap"] for r in rows) / n,
        "repetition_rate": sum(r["repetition_rate"] for r in rows) / n,
        "mean_new_tokens": sum(r["new_tokens"] for r in rows) / n,
        "examples": len(rows),
    }
    return rows, summary


@torch.no_grad()
def response_logits(model, tokenizer, examples: list[Example], batch_size: int, chat=None) -> list[torch.Tensor]:
    """Per batch, the model's next-token logits at the response positions, float32 on the CPU (an exact copy
    of bf16 or fp32 logits): kept, they let one model be compared after it has changed (merged)."""
    encoded, _ = encode_examples(tokenizer, examples, max_length=None, chat=chat)
    # Dropout (LoRA's included) must be off, or the KL measures noise rather than the merge.
    model.eval()
    dev = next(model.parameters()).device
    logits = []
    for batch_rows in _batches(encoded, batch_size):
        batch = pad_batch(batch_rows, tokenizer.pad_token_id)
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        out = _row_logits(
            model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)), batch
        )
        logits.append(out[:, :-1][mask.to(dev)].float().cpu())
    return logits


def kl_between(logits_p: list[torch.Tensor], logits_q: list[torch.Tensor]) -> dict:
    """Mean over response tokens of KL(P || Q), from two models' response_logits on the same examples, and
    how often the two pick the same next token (what greedy decoding follows, without decoding)."""
    total_kl, total_tokens, same_top1 = 0.0, 0, 0
    for p, q in zip(logits_p, logits_q, strict=True):
        same_top1 += int((p.argmax(dim=-1) == q.argmax(dim=-1)).sum())
        # float64: a KL of nearly equal models is a difference of nearly equal numbers, which float32 turns
        # into noise of either sign (a "negative KL").
        log_p, log_q = F.log_softmax(p.double(), dim=-1), F.log_softmax(q.double(), dim=-1)
        total_kl += float((log_p.exp() * (log_p - log_q)).sum())
        total_tokens += p.shape[0]
    tokens = max(total_tokens, 1)
    return {"mean_kl": total_kl / tokens, "top1_agreement": same_top1 / tokens, "tokens": total_tokens}


def evaluate_model(model, tokenizer, examples: list[Example], params) -> tuple[dict, list[dict], dict]:
    """What the evaluate stage measures for one model, in one load: response perplexity, then greedy answers
    scored GSM8K-style. Returns (perplexity metrics, per-row records, generation summary)."""
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    perplexity = response_nll(model, tokenizer, examples, params.eval.batch_size, chat=chat)
    rows, summary = answer_and_score(model, tokenizer, examples, params, chat)
    return perplexity, rows, summary


def answer_and_score(model, tokenizer, examples: list[Example], params, chat=None) -> tuple[list[dict], dict]:
    """Greedy answers to `examples`' questions scored GSM8K-style (any set whose answers are one number)."""
    chat = chat or ChatFormat.of(tokenizer, params.prompt.system)
    cfg = params.eval
    generations = generate_answers(
        model, tokenizer, [e.question for e in examples], cfg.generation_batch_size, cfg.max_new_tokens, chat
    )
    return score_generations(examples, generations)
