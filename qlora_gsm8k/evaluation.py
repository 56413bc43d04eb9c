"""What the evaluate stage measures of one model on one eval set: response-token perplexity (sets with worked
solutions), and greedy answers scored against the reference numbers (generation.py, scoring.py). The paired
statistics between two models: paired.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .context import check_fits_context, model_context
from .errors import UserError
from .generation import answer_and_score, batches, longest_first
from .logits import row_logits
from .modeling import dequantize_base_into
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


def evaluate_model(
    model, tokenizer, eval_rows: list, solutions: list[Example], params, label: str, model_dir: str
) -> tuple[dict, list[dict], dict]:
    """What the evaluate stage measures for one model, in one load: response perplexity over `solutions` (the rows'
    worked solutions; none: no perplexity), then greedy answers to `eval_rows` scored against their reference
    numbers. Returns (perplexity metrics by model, per-row records, generation summary)."""
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    perplexity = {}
    if solutions:
        perplexity[label] = response_nll(model, tokenizer, solutions, params.eval.batch_size, chat=chat)
        print(f"{label} perplexity {perplexity[label]['perplexity']:.3f} over {perplexity[label]['tokens']} tokens")
    rows, summary = answer_and_score(model, tokenizer, eval_rows, params, chat)
    if solutions and label == "base":
        # The base in 4-bit as the dequantized NF4 (quant.quant_type, quant.double_quant) weights in eval.dtype, not
        # bitsandbytes' 4-bit forward pass: these are exactly the weights the tuned model is merged into, run in the
        # same dtype and kernels as both other models. So 4-bit minus 16-bit base is the weights' rounding alone, and
        # tuned minus 4-bit base the adapter alone; bitsandbytes computes with the same weights, but in
        # quant.compute_dtype and, on some CPUs, a bf16 kernel (docs/testing.md), which would leak into both
        # differences.
        # Here, not in a stage of its own: one more load in this process, where a stage would add its start-up (the
        # larger part, measured); the price is that a quant.quant_type/double_quant change re-runs base generation.
        dequantize_base_into(model, model_dir, params.quant)
        perplexity["base_4bit"] = response_nll(model, tokenizer, solutions, params.eval.batch_size, chat=chat)
        print(f"base in 4-bit perplexity {perplexity['base_4bit']['perplexity']:.3f}")
    return perplexity, rows, summary
