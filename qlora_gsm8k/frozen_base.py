"""The 4-bit base as every adapter trains on it (the train stage's SFT, the rl stage's GRPO): every base weight frozen,
in the precision its compute dtype needs."""

from __future__ import annotations

import torch


def freeze_base(model, compute_dtype: torch.dtype, gradient_checkpointing: bool, upcast_fp32: bool | None = None):
    """Freeze every base weight before LoRA is added.

    peft's prepare_model_for_kbit_training also casts the 16-bit weights left unquantized (embeddings, norms,
    lm_head) to float32. With float16 compute that is needed (float16 norms overflow); with bfloat16 it only
    makes the residual stream float32 and adds a cast per op under autocast, so it is skipped (None = that
    rule; the benchmark sets it to compare both)."""
    from peft import prepare_model_for_kbit_training

    if upcast_fp32 is None:
        upcast_fp32 = compute_dtype != torch.bfloat16
    if upcast_fp32:
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    for param in model.parameters():
        param.requires_grad_(False)
    return model
