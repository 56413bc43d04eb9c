"""What the evaluate stage measures of one model: response-token perplexity, and greedy answers scored GSM8K-style
(generation.py, scoring.py). The paired statistics between two models: paired.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .context import check_fits_context, model_context
from .errors import UserError
from .generation import answer_and_score, batches, longest_first
from .logits import row_logits
from .progress import progress
from .prompts import IGNORE_INDEX, ChatFormat, encode_examples, pad_batch
from .rows import Example


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
    order = longest_first(encoded, lambda e: len(e.input_ids))
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    per_sample_ppl = []
    model.eval()
    dev = next(model.parameters()).device
    for batch_idx in progress(batches(order, batch_size), desc="perplexity", unit="batch"):
        batch = pad_batch([encoded[i] for i in batch_idx], tokenizer.pad_token_id)
        batch = {k: v.to(dev) for k, v in batch.items()}
        logits = row_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch)
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


def evaluate_model(model, tokenizer, examples: list[Example], params) -> tuple[dict, list[dict], dict]:
    """What the evaluate stage measures for one model, in one load: response perplexity, then greedy answers
    scored GSM8K-style. Returns (perplexity metrics, per-row records, generation summary)."""
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    perplexity = response_nll(model, tokenizer, examples, params.eval.batch_size, chat=chat)
    rows, summary = answer_and_score(model, tokenizer, examples, params, chat)
    return perplexity, rows, summary
