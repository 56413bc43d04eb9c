"""Adapter merge modes and the merge check against the 4-bit model the adapter was trained with.

`eval.merge_into`:
- `dequantized` (default): the adapter is added to the base's NF4 weights dequantized (what the trained model
  computed with, and what Unsloth's merged export does). The merged model is the trained model up to the
  rounding of the compute dtype: on SmolLM2-135M-Instruct it agreed with the 4-bit adapter model on 99% of
  next tokens (KL 0.0015, H200 bf16; 99.6% / KL 0.00026 on CPU fp32).
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
from .io import record_weight_digests, verify_weight_digests
from .logits import kl_between, response_logits
from .modeling import dequantized_weights, load_model, load_tokenizer, quant_in_dtype, replace_weights, resolve_dtype
from .peft_methods import method_of
from .prompts import ChatFormat
from .rows import Example


class MergeCheckError(UserError):
    pass


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
    from peft import PeftModel

    model = load_model(base_dir, dtype=resolve_dtype(dtype_name), quant=quant)
    if base_weights:
        replace_weights(model, base_weights)
    verify_weight_digests(adapter_dir)
    return adapter_in_dtype(PeftModel.from_pretrained(model, str(adapter_dir)), resolve_dtype(dtype_name))


def merge_adapter(base_dir: Path, adapter_dir: Path, examples: list[Example], params: Params):
    """Merge the adapter as `eval.merge_into` says and check the merge on `examples`.
    Returns (merged model, tokenizer, merge-check metrics).

    The check compares the merged model with the adapter on the 4-bit base it was trained on (what training
    produced), and with the unmerged adapter on the same 16-bit weights (the merge arithmetic alone).
    Teacher-forced over response tokens, without decoding: the top-1 agreement is what greedy decoding
    follows, per token."""
    from peft import PeftModel

    cfg = params.eval
    tokenizer = load_tokenizer(adapter_dir)
    # The trained model as reference, computed in the precision the merged model runs in (eval.dtype): in bf16
    # both round differently, which is the bf16 runtime's noise, not the merge's (SmolLM2: top-1 0.989 in bf16).
    dtype = resolve_dtype(cfg.dtype)
    base_4bit = load_model(base_dir, dtype=dtype, quant=quant_in_dtype(params.quant, dtype))
    # Prompt and prefix tuning learn tokens, not weight deltas: nothing to merge. The adapter is kept on the same
    # 16-bit weights a merge would use (save_merged writes both).
    mergeable = method_of(params).mergeable
    base_weights = dequantized_weights(base_4bit) if cfg.merge_into == "dequantized" else None
    verify_weight_digests(adapter_dir)
    adapter_4bit = adapter_in_dtype(PeftModel.from_pretrained(base_4bit, str(adapter_dir)), dtype)
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    logits_4bit = response_logits(adapter_4bit, tokenizer, examples, cfg.batch_size, chat)
    del adapter_4bit, base_4bit

    unmerged = load_with_adapter(base_dir, adapter_dir, cfg.dtype, base_weights=base_weights)
    del base_weights
    unmerged_logits = response_logits(unmerged, tokenizer, examples, cfg.batch_size, chat)
    if mergeable:
        # IA3's vectors are float32: merged into bf16 weights they would leave float32 layers among bf16 ones.
        merged = unmerged.merge_and_unload().to(dtype)
        merged.generation_config.pad_token_id = tokenizer.pad_token_id
        merged_logits = response_logits(merged, tokenizer, examples, cfg.batch_size, chat)
    else:
        merged, merged_logits = unmerged, unmerged_logits
        merged.get_base_model().generation_config.pad_token_id = tokenizer.pad_token_id
    kl_16bit = kl_between(merged_logits, unmerged_logits)
    kl_4bit = kl_between(merged_logits, logits_4bit)
    metrics = {
        "kl_merged_vs_4bit_adapter": kl_4bit["mean_kl"],
        "kl_merged_vs_16bit_adapter": kl_16bit["mean_kl"],
        "top1_agreement_merged_vs_4bit_adapter": kl_4bit["top1_agreement"],
        "kl_tokens": kl_4bit["tokens"],
        "check_examples": len(examples),
        "merged": int(mergeable),
    }
    return merged, tokenizer, metrics


_FLAT_LOGITS_KL = 2e-3


def check_merge(metrics: dict, params: Params) -> None:
    """Refuse a merged model that does not behave like the trained one."""
    cfg = params.eval
    kl, top1 = metrics["kl_merged_vs_4bit_adapter"], metrics["top1_agreement_merged_vs_4bit_adapter"]
    problems = []
    if kl > cfg.merge_kl_threshold:
        problems.append(
            f"mean KL(merged || 4-bit base + adapter) = {kl:.3g} > eval.merge_kl_threshold = {cfg.merge_kl_threshold}"
        )
    if top1 < cfg.merge_min_top1_agreement:
        problems.append(
            f"top-1 agreement with the 4-bit model = {top1:.4f} < eval.merge_min_top1_agreement = "
            f"{cfg.merge_min_top1_agreement}"
        )
    if problems:
        if cfg.merge_into == "original":
            hint = (
                " Merging into the original 16-bit weights changes the model (SmolLM2-135M: 87% agreement): use "
                "-S eval.merge_into=dequantized, or loosen the thresholds to accept it."
            )
        elif kl <= _FLAT_LOGITS_KL:
            # A random-weight base's near-flat logits: 16-bit rounding flips the arg-max, not the distribution
            # (TinyLlama-arch on an H200 in bf16: top-1 0.93 at KL 3.9e-4; real SmolLM2: 0.99 at 1e-3).
            hint = (
                f" The distributions agree (KL {kl:.2g}): only the arg-max moved, as with near-flat logits (a"
                " random-weight model). -S eval.dtype=float32 merges exactly; or lower eval.merge_min_top1_agreement"
                " for such a model."
            )
        else:
            hint = ""
        measured = f"(over {metrics['kl_tokens']} response tokens of {metrics['check_examples']} held-out rows)"
        raise MergeCheckError(f"merge check failed: {'; '.join(problems)} {measured}; the model was not saved.{hint}")


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
