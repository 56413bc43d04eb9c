"""Adapter merge into a 16-bit base and the merge check against the 4-bit training-time model."""

from __future__ import annotations

from pathlib import Path

from .config import Params
from .errors import UserError
from .evaluation import generate_answers, mean_kl, score_generations
from .gsm8k import Example
from .modeling import load_model, load_tokenizer, resolve_dtype


class MergeCheckError(UserError):
    pass


def load_with_adapter(base_dir: Path, adapter_dir: Path, dtype_name: str, quant=None):
    from peft import PeftModel

    model = load_model(base_dir, dtype=resolve_dtype(dtype_name), quant=quant)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def merge_adapter(base_dir: Path, adapter_dir: Path, dtype_name: str):
    """Base reloaded in 16-bit (fp32 on CPU) + adapter, merged. Merging into 4-bit weights would
    round the adapter into NF4 and change outputs."""
    merged = load_with_adapter(base_dir, adapter_dir, dtype_name).merge_and_unload()
    tokenizer = load_tokenizer(adapter_dir)
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    return merged, tokenizer


def merge_check(merged, base_dir: Path, adapter_dir: Path, tokenizer, examples: list[Example], params: Params):
    cfg = params.eval
    adapter_4bit = load_with_adapter(base_dir, adapter_dir, cfg.dtype, quant=params.quant)
    kl_4bit = mean_kl(merged, adapter_4bit, tokenizer, examples, cfg.batch_size)
    unmerged_16bit = load_with_adapter(base_dir, adapter_dir, cfg.dtype)
    kl_16bit = mean_kl(merged, unmerged_16bit, tokenizer, examples, cfg.batch_size)
    del unmerged_16bit
    questions = [e.question for e in examples]
    accuracies = {}
    for name, model in (("merged", merged), ("adapter_4bit", adapter_4bit)):
        gens = generate_answers(model, tokenizer, questions, cfg.generation_batch_size, cfg.max_new_tokens)
        accuracies[name] = score_generations(examples, gens)[1]["exact_match_flexible"]
    return {
        "kl_merged_vs_4bit_adapter": kl_4bit["mean_kl"],
        "kl_merged_vs_16bit_adapter": kl_16bit["mean_kl"],
        "kl_tokens": kl_4bit["tokens"],
        "exact_match_merged": accuracies["merged"],
        "exact_match_4bit_adapter": accuracies["adapter_4bit"],
        "exact_match_gap": accuracies["merged"] - accuracies["adapter_4bit"],
        "check_examples": len(examples),
        "kl_threshold": cfg.merge_kl_threshold,
        "precision": str(resolve_dtype(cfg.dtype)).removeprefix("torch."),
    }
