"""Adapter merge modes and the merge check against the 4-bit model the adapter was trained with.

`eval.merge_into`:
- `dequantized` (default): the adapter is added to the base's NF4 weights dequantized (what the trained model
  computed with, and what Unsloth's merged export does), summed in float32 and saved in `eval.merged_dtype`. The
  merged model is the trained model up to that rounding: on SmolLM2-135M-Instruct saved in float16 it agreed with
  the 4-bit adapter model on 99.7-99.8% of next tokens and on every clear one (KL 1.2e-5-1.6e-5, H100; exact in
  float32; bench/MERGE.md).
- `original`: the adapter is added to the base's original 16-bit weights, which it was never trained against:
  87% agreement there (KL 0.125). The check below refuses such a merge unless its thresholds are loosened.
Merging into the 4-bit weights themselves (peft's merge_and_unload on a 4-bit base) would round the adapter
into NF4; neither mode does that."""

from __future__ import annotations

from pathlib import Path

import torch

from .cards import name_adapter_base
from .config import Params
from .errors import UserError
from .io import record_weight_digests
from .logits import decided_agreement, kl_between, response_logits
from .modeling import (
    dequantized_weights,
    load_adapter,
    load_model,
    load_tokenizer,
    quant_in_dtype,
    replace_weights,
    resolve_dtype,
)
from .peft_methods import method_of
from .prompts import ChatFormat
from .rows import Example
from .startup import first_work, phase


class MergeCheckError(UserError):
    pass


def merged_dtype(cfg) -> torch.dtype:
    """eval.merged_dtype resolved: auto is float16 where the models run in 16 bits, float32 where they run in 32."""
    if cfg.merged_dtype != "auto":
        return resolve_dtype(cfg.merged_dtype)
    return torch.float32 if resolve_dtype(cfg.dtype) == torch.float32 else torch.float16


@torch.no_grad()
def round_weights(model, dtype: torch.dtype) -> None:
    """Round every weight to `dtype` in place, keeping its dtype: the model computes with the weights it will be
    saved with."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype).to(parameter.dtype)


def adapter_in_dtype(model, dtype: torch.dtype):
    """IA3 outside training's autocast, in bf16/fp16: its scaling vectors are saved in float32, and peft's IA3 on
    bitsandbytes 4-bit layers computes in float32 and returns float32 keys and values beside bf16 queries, which
    attention refuses. Cast the vectors to the model's dtype, and those layers' outputs back to their input's."""
    for name, parameter in model.named_parameters():
        if ".ia3_l." in name and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
    if dtype != torch.float32:
        from peft.tuners.ia3.bnb import Linear4bit as IA3Linear4bit

        for module in model.modules():
            if isinstance(module, IA3Linear4bit):
                module.register_forward_hook(lambda _module, args, output: output.to(args[0].dtype))
    return model


def load_with_adapter(base_dir: Path, adapter_dir: Path, dtype_name: str, quant=None, base_weights=None):
    """The base (16-bit, or 4-bit with `quant`) with the adapter on top; `base_weights` (name -> tensor)
    replace the base's linear weights first (the dequantized NF4 weights)."""
    model = load_model(base_dir, dtype=resolve_dtype(dtype_name), quant=quant)
    if base_weights:
        replace_weights(model, base_weights)
    return adapter_in_dtype(load_adapter(model, adapter_dir), resolve_dtype(dtype_name))


def merge_adapter(base_dir: Path, adapter_dir: Path, examples: list[Example], params: Params):
    """Merge the adapter as `eval.merge_into` says and check the merge on `examples`.
    Returns (merged model in eval.merged_dtype, tokenizer, merge-check metrics).

    The check compares the merged model with the adapter on the 4-bit base it was trained on (what training
    produced), and with the unmerged adapter on the same 16-bit weights (the merge arithmetic alone).
    Teacher-forced over response tokens, without decoding: the top-1 agreement is what greedy decoding
    follows, per token."""
    cfg = params.eval
    tokenizer = load_tokenizer(adapter_dir)
    save_dtype = merged_dtype(cfg)
    # Both sides of the check compute in float32, the merged one with its weights rounded as they are saved: the
    # check asks whether the saved weights are the trained model. Run in bf16, each side rounds its own arithmetic
    # differently, and that noise, which any bf16 model has, not the merge, set the top-1 (SmolLM2: 0.99;
    # random-weight TinyLlama: 0.93). The merge itself is summed in float32 and rounded once (bench/MERGE.md).
    check_dtype = torch.float32
    base_4bit = load_model(base_dir, dtype=check_dtype, quant=quant_in_dtype(params.quant, check_dtype))
    # Prompt and prefix tuning learn tokens, not weight deltas: nothing to merge. The adapter is kept on the same
    # 16-bit weights a merge would use (save_merged writes both).
    mergeable = method_of(params).mergeable
    with phase("set-up"):
        base_weights = dequantized_weights(base_4bit) if cfg.merge_into == "dequantized" else None
    adapter_4bit = adapter_in_dtype(load_adapter(base_4bit, adapter_dir), check_dtype)
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    first_work()
    logits_4bit = response_logits(adapter_4bit, tokenizer, examples, cfg.batch_size, chat)
    with adapter_4bit.disable_adapter():
        logits_untrained = response_logits(adapter_4bit, tokenizer, examples, cfg.batch_size, chat)
    training_effect = kl_between(logits_4bit, logits_untrained)
    del adapter_4bit, base_4bit, logits_untrained

    unmerged = load_with_adapter(base_dir, adapter_dir, "float32", base_weights=base_weights)
    del base_weights
    unmerged_logits = response_logits(unmerged, tokenizer, examples, cfg.batch_size, chat)
    merged = unmerged.merge_and_unload() if mergeable else unmerged
    round_weights(merged, save_dtype)
    merged_logits = response_logits(merged, tokenizer, examples, cfg.batch_size, chat)
    merged = merged.to(save_dtype)
    (merged if mergeable else merged.get_base_model()).generation_config.pad_token_id = tokenizer.pad_token_id
    kl_16bit = kl_between(merged_logits, unmerged_logits)
    kl_4bit = kl_between(merged_logits, logits_4bit)
    decided = decided_agreement(logits_4bit, merged_logits, DECIDED_LOGIT_GAP)
    metrics = {
        "kl_merged_vs_4bit_adapter": kl_4bit["mean_kl"],
        "kl_merged_vs_16bit_adapter": kl_16bit["mean_kl"],
        "top1_agreement_merged_vs_4bit_adapter": kl_4bit["top1_agreement"],
        # None (no such token: near-flat logits) is written as the share over every token, so the key always has
        # a number for `dvc metrics diff`; decided_tokens says which it is.
        "top1_agreement_decided": decided["top1_agreement"] if decided["tokens"] else kl_4bit["top1_agreement"],
        "decided_tokens": decided["tokens"],
        "kl_4bit_adapter_vs_4bit_base": training_effect["mean_kl"],
        "kl_tokens": kl_4bit["tokens"],
        "check_examples": len(examples),
        "merged": int(mergeable),
    }
    return merged, tokenizer, metrics


# The top-1 bar counts the tokens where the trained model's top two logits are at least this far apart (the top
# token e times as likely as the runner-up, or more): there a flipped arg-max is a changed model, not rounding.
# Rounding moves logits far less (|Δlogit| p99 0.03-0.3 in bf16, bench/MERGE.md); a random-weight model's
# near-flat logits have almost no such token, where the top-1 over all tokens flipped on ties (0.93 in bf16).
DECIDED_LOGIT_GAP = 1.0


def check_merge(metrics: dict, params: Params) -> None:
    """Refuse a merged model that does not behave like the trained one: its next-token distributions (KL) moved, or
    it picks another next token where the trained model's choice was clear."""
    cfg = params.eval
    kl, top1, decided = (
        metrics["kl_merged_vs_4bit_adapter"],
        metrics["top1_agreement_decided"],
        metrics["decided_tokens"],
    )
    problems = []
    if kl > cfg.merge_kl_threshold:
        problems.append(
            f"mean KL(merged || 4-bit base + adapter) = {kl:.3g} > eval.merge_kl_threshold = {cfg.merge_kl_threshold}"
        )
    if decided and top1 < cfg.merge_min_top1_agreement:
        problems.append(
            f"top-1 agreement with the 4-bit model = {top1:.4f} < eval.merge_min_top1_agreement = "
            f"{cfg.merge_min_top1_agreement}, over the {decided} tokens where its top two logits are >= "
            f"{DECIDED_LOGIT_GAP} apart"
        )
    if problems:
        hint = (
            " Merging into the original 16-bit weights changes the model (SmolLM2-135M: 87% agreement): use "
            "-S eval.merge_into=dequantized, or loosen the thresholds to accept it."
            if cfg.merge_into == "original"
            else ""
        )
        measured = f"(over {metrics['kl_tokens']} response tokens of {metrics['check_examples']} held-out rows)"
        raise MergeCheckError(f"merge check failed: {'; '.join(problems)} {measured}; the model was not saved.{hint}")


def merge_check_summary(metrics: dict) -> str:
    """One line for the stage's output: what the check compared and found."""
    kl, decided = metrics["kl_merged_vs_4bit_adapter"], metrics["decided_tokens"]
    top1 = (
        f"top-1 agreement {metrics['top1_agreement_decided']:.4f} over {decided} tokens with a clear choice"
        if decided
        else "no token with a clear choice (near-flat logits: a random-weight model?), so the KL alone"
    )
    return (
        f"against the 4-bit model: KL {kl:.2e} (training moved it by {metrics['kl_4bit_adapter_vs_4bit_base']:.2e}), "
        f"{top1}, {metrics['top1_agreement_merged_vs_4bit_adapter']:.4f} over all {metrics['kl_tokens']}"
    )


UNMERGED_ADAPTER = "adapter"


def save_merged(model, tokenizer, out_dir: Path, shown_as: str | Path) -> None:
    """The merged model with its tokenizer and weight digests. For prompt/prefix tuning (a PeftModel, nothing to
    merge): the 16-bit weights it runs on, plus the adapter in out_dir/adapter naming them (`shown_as`: the directory
    as stages and users reach it). Not side by side: transformers would load an adapter it finds beside weights."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    if isinstance(model, PeftModel):
        model.get_base_model().save_pretrained(out_dir, safe_serialization=True)
        model.save_pretrained(out_dir / UNMERGED_ADAPTER, safe_serialization=True)
        name_adapter_base(out_dir / UNMERGED_ADAPTER, str(shown_as))
        record_weight_digests(out_dir / UNMERGED_ADAPTER)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    record_weight_digests(out_dir)
