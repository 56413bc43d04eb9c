"""Two models compared on the same rows without decoding: their next-token logits at the response positions, and
the KL divergence and top-1 agreement between them (the merge check's numbers). No generation code: an edit there
never re-runs the merge."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .prompts import IGNORE_INDEX, encode_examples, pad_batch
from .rows import Example


def row_logits(output, batch) -> torch.Tensor:
    """Logits at the batch's own positions: prompt tuning (peft.method=prompt) puts its virtual tokens first."""
    return output.logits[:, -batch["input_ids"].shape[1] :]


@torch.no_grad()
def response_logits(model, tokenizer, examples: list[Example], batch_size: int, chat=None) -> list[torch.Tensor]:
    """Per batch, the model's next-token logits at the response positions, float32 on the CPU (an exact copy
    of bf16 or fp32 logits): kept, they let one model be compared after it has changed (merged)."""
    encoded, _ = encode_examples(tokenizer, examples, max_length=None, chat=chat)
    # Dropout (LoRA's included) must be off, or the KL measures noise rather than the merge.
    model.eval()
    dev = next(model.parameters()).device
    logits = []
    for start in range(0, len(encoded), batch_size):
        batch = pad_batch(encoded[start : start + batch_size], tokenizer.pad_token_id)
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        out = row_logits(
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


def decided_agreement(reference: list[torch.Tensor], other: list[torch.Tensor], min_gap: float) -> dict:
    """Top-1 agreement over the tokens where the reference's top two logits are at least `min_gap` apart: the
    arg-maxes that rounding cannot honestly move. A random-weight model's near-flat logits have few or none such
    tokens, and there the agreement over all tokens measures only which near-ties the rounding flipped."""
    decided, same = 0, 0
    for ref, got in zip(reference, other, strict=True):
        top2 = ref.topk(2, dim=-1).values
        mask = (top2[:, 0] - top2[:, 1]) >= min_gap
        decided += int(mask.sum())
        same += int((ref.argmax(dim=-1) == got.argmax(dim=-1))[mask].sum())
    return {"top1_agreement": same / decided if decided else None, "tokens": decided}
