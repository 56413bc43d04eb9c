"""Adapter merge into a 16-bit base and the merge check against the 4-bit training-time model."""

from __future__ import annotations

from pathlib import Path

from .config import Params
from .errors import UserError
from .evaluation import kl_between, response_logits
from .gsm8k import Example
from .modeling import load_model, load_tokenizer, resolve_dtype


class MergeCheckError(UserError):
    pass


def load_with_adapter(base_dir: Path, adapter_dir: Path, dtype_name: str, quant=None):
    from peft import PeftModel

    model = load_model(base_dir, dtype=resolve_dtype(dtype_name), quant=quant)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def merge_adapter(base_dir: Path, adapter_dir: Path, examples: list[Example], params: Params):
    """Merge the adapter into the base reloaded in 16-bit (fp32 on CPU) and check the merge on `examples`.
    Returns (merged model, tokenizer, merge-check metrics).

    Merging into 4-bit weights would round the adapter into NF4 and change outputs. The check compares the
    merged model with the adapter on the 4-bit base it was trained on, and with the unmerged 16-bit model,
    whose logits are taken before merging so the 16-bit base is loaded once. Teacher-forced, without decoding:
    greedy answers of two models this close agree mostly by chance on a few questions, and decoding them took
    most of the stage's time on an H200 (bench/RESULTS.md); the top-1 agreement says the same per token."""
    cfg = params.eval
    tokenizer = load_tokenizer(adapter_dir)
    unmerged = load_with_adapter(base_dir, adapter_dir, cfg.dtype)
    unmerged_logits = response_logits(unmerged, tokenizer, examples, cfg.batch_size)
    merged = unmerged.merge_and_unload()
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged_logits = response_logits(merged, tokenizer, examples, cfg.batch_size)
    kl_16bit = kl_between(merged_logits, unmerged_logits)
    del unmerged_logits
    adapter_4bit = load_with_adapter(base_dir, adapter_dir, cfg.dtype, quant=params.quant)
    kl_4bit = kl_between(merged_logits, response_logits(adapter_4bit, tokenizer, examples, cfg.batch_size))
    metrics = {
        "kl_merged_vs_4bit_adapter": kl_4bit["mean_kl"],
        "kl_merged_vs_16bit_adapter": kl_16bit["mean_kl"],
        "top1_agreement_merged_vs_4bit_adapter": kl_4bit["top1_agreement"],
        "kl_tokens": kl_4bit["tokens"],
        "check_examples": len(examples),
        "kl_threshold": cfg.merge_kl_threshold,
        "precision": str(resolve_dtype(cfg.dtype)).removeprefix("torch."),
    }
    return merged, tokenizer, metrics
