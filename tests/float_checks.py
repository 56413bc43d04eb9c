"""Float comparisons that state a property ("the same model"), not one CPU's rounding of it.

x86 CPUs take different float paths for the same code: oneDNN and ATen pick AVX2 or AVX512 kernels (other
summation orders), and bitsandbytes runs 4-bit layers through a bf16-only kernel on CPUs with AVX512-BF16 unless
told not to (modeling.keep_4bit_layers_in_compute_dtype). Two computations of one model in float32 then differ by
a few float32 ulps of the accumulated sums; a near-tied arg-max can flip on any of them. So: bound the logits'
difference by the precision, bound the KL by what that difference allows, and compare arg-maxes only where the
reference's top two logits are further apart than the difference can move them.
"""

from __future__ import annotations

import torch

# Largest |Δlogit| between two float32 computations of the same tiny model (hidden 64, 2 layers, |logit| < 1):
# float32's epsilon (1.2e-7) over a few hundred accumulated terms is ~1e-6; 1e-4 leaves two decades for other
# kernels and stays well under what the bf16 kernel gives (~1e-3) and what a trained adapter moves (> 1e-2).
FLOAT32_LOGIT_ATOL = 1e-4
# KL(p || q) <= (max δ - min δ)^2 / 8 for logits q = p + δ (Hoeffding's lemma): the bound the atol allows.
FLOAT32_KL_BOUND = (2 * FLOAT32_LOGIT_ATOL) ** 2 / 8
# Share of next tokens a merge check may see flip on near ties in float32 (a token in a hundred); the exact
# arg-max property is asserted on logits by assert_same_next_tokens.
FLOAT32_MIN_TOP1 = 0.99


def assert_same_next_tokens(got: torch.Tensor, reference: torch.Tensor, atol: float = FLOAT32_LOGIT_ATOL) -> dict:
    """`got` and `reference`: [tokens, vocab] logits of two computations meant to be one model. Returns the
    measured figures (for messages and for tests that check a wrong model fails)."""
    got, reference = got.double(), reference.double()
    max_diff = float((got - reference).abs().max())
    log_p, log_q = torch.log_softmax(reference, -1), torch.log_softmax(got, -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    top2 = reference.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * atol
    flipped = int((got.argmax(-1) != reference.argmax(-1))[decided].sum())
    figures = {"max_abs_diff": max_diff, "kl": kl, "decided_tokens": int(decided.sum()), "flipped": flipped}
    assert max_diff <= atol, f"max |Δlogit| {max_diff:.3g} > {atol:g}: {figures}"
    assert kl <= (2 * atol) ** 2 / 8, f"KL {kl:.3g} above what |Δlogit| <= {atol:g} allows: {figures}"
    assert flipped == 0, f"{flipped} arg-max flips where the top two logits are > {2 * atol:g} apart: {figures}"
    return figures
