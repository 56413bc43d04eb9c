"""Model and tokenizer loading in one place: 16-bit or 4-bit loads of a saved model and the bitsandbytes config they
take. Where the base comes from: sources; the adapter configs (QLoRA = an adapter + quant): peft_methods."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .errors import UserError
from .startup import check_weights_alongside, cuda_ready, phase, verified_weights
from .train_config import QuantConfig


def device() -> torch.device:
    """This process's device: under DDP each rank owns the GPU of its LOCAL_RANK."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def configure_attention_backends(cudnn_attention: bool = False) -> None:
    """PyTorch picks cuDNN's attention first on Hopper. cuDNN builds an execution plan for every new sequence
    length, about 2 ms of CPU per layer call (profiled on an H200, bench/RESULTS.md), and every batch of
    length-grouped training rows, and every generated token, is a new length: off, the flash and
    memory-efficient kernels do the same work with no planning. The benchmark turns it on to measure both."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' is bfloat16 where the GPU supports it, float32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def ensure_distinct_pad(tokenizer) -> None:
    """pad == eos would mask every EOS label and the model would never learn to stop.
    Reuse <unk> as pad where the vocabulary has one, so no embedding has to grow."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token_id is None or tokenizer.unk_token_id == tokenizer.eos_token_id:
        raise UserError("the tokenizer has no pad or unk token distinct from EOS; add one to the base model")
    tokenizer.pad_token = tokenizer.unk_token


def set_distinct_pad(tokenizer, *configs) -> None:
    """Give the tokenizer a pad token distinct from EOS, and the model and generation configs its id."""
    ensure_distinct_pad(tokenizer)
    for config in configs:
        config.pad_token_id = tokenizer.pad_token_id


def save_base(model, tokenizer, out_dir: str | Path) -> None:
    set_distinct_pad(tokenizer, model.config, model.generation_config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_tokenizer(path: str | Path, padding_side: str = "right"):
    with phase("imports"):
        from transformers import AutoTokenizer
    with phase("model load"):
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    # transformers ignores (and warns about) this space clean-up for BPE tokenizers; off, decoding is exact.
    tokenizer.clean_up_tokenization_spaces = False
    ensure_distinct_pad(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization_config(quant: QuantConfig):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(quant.compute_dtype),
    )


def load_model(path: str | Path, dtype: torch.dtype, quant: QuantConfig | None = None, cudnn_attention: bool = False):
    """Load a saved model: 16-bit (or fp32) when `quant` is None, else bitsandbytes 4-bit. `cudnn_attention`: see
    configure_attention_backends (the benchmark's lever; off everywhere else)."""
    with phase("imports"):
        from transformers import AutoModelForCausalLM

    # Hashed while the model loads, if the stage did not start it earlier.
    check_weights_alongside(path)
    cuda_ready()
    configure_attention_backends(cudnn_attention)
    kwargs = {}
    if quant is not None:
        kwargs["quantization_config"] = quantization_config(quant)
        dtype = resolve_dtype(quant.compute_dtype)
    with phase("model load"):
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=dtype,
            device_map={"": device()},
            use_safetensors=True,
            trust_remote_code=False,
            **kwargs,
        )
        if quant is not None:
            keep_4bit_layers_in_compute_dtype(model)
    # Returned, and so used, only once its files are what their stage wrote.
    verified_weights(path)
    return model


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False):
    """`model` with the saved adapter at `adapter_dir` on top, its weights checked like the base's; `trainable`: to
    train further (the rl stage)."""
    with phase("imports"):
        from peft import PeftModel

    check_weights_alongside(adapter_dir)
    with phase("model load"):
        adapted = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    verified_weights(adapter_dir)
    return adapted


def keep_4bit_layers_in_compute_dtype(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes runs a 4-bit layer outside training through a bf16-only kernel,
    whatever its compute dtype (inputs and scales cast to bf16). A float32 evaluation of the 4-bit model then
    rounds like bf16 on those CPUs and like float32 on others: the merge check's reference would depend on the
    CPU. Keep the float32 path unless bf16 was asked for; GPUs never take that kernel."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and module.compute_dtype != torch.bfloat16:
            module.support_avx512bf16_for_cpu = False


def quant_in_dtype(quant: QuantConfig, dtype: torch.dtype) -> QuantConfig:
    """params' quant settings computing in `dtype`: the 4-bit base as the merge and the evaluation of the 4-bit base
    take it, quantized from and dequantized to the precision the evaluated models run in (eval.dtype)."""
    return dataclasses.replace(quant, compute_dtype=str(dtype).removeprefix("torch."))


def dequantized_weights(model) -> dict[str, torch.Tensor]:
    """Every bitsandbytes 4-bit linear layer's weight as the 4-bit forward pass computes with it.
    Taken before the model's first forward pass: on CPU bitsandbytes may repack 4-bit weights then, and a
    later dequantize gave garbage (bench/MERGE.md, "DoRA merges as exactly as LoRA")."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    return {
        name: dequantize_4bit(module.weight.data, module.weight.quant_state)
        for name, module in model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    }


@torch.no_grad()
def replace_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (module name -> weight) into the model's modules of those names, in the model's dtype."""
    for name, weight in weights.items():
        target = model.get_submodule(name).weight
        target.copy_(weight.to(device=target.device, dtype=target.dtype))


def dequantize_base_into(model, path: str | Path, quant: QuantConfig) -> None:
    """Replace the 16-bit `model`'s linear weights with the base at `path` quantized to 4-bit as `quant` says and
    dequantized back to the model's dtype: the weights the merge adds the adapter to (eval.merge_into=dequantized)."""
    dtype = next(model.parameters()).dtype
    quantized = load_model(path, dtype=dtype, quant=quant_in_dtype(quant, dtype))
    replace_weights(model, dequantized_weights(quantized))


def skeleton_from_config(config):
    """A model's architecture on the meta device: module names without memory or weights."""
    with phase("imports"):
        from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def load_for_eval(path: str | Path, dtype_name: str):
    """A saved model and its tokenizer as both evaluation stages run them; returns (model, tokenizer, precision).
    A merge stage output with an `adapter/` inside (prompt or prefix tuning, which cannot merge) is the weights
    there with that adapter on top."""
    dtype = resolve_dtype(dtype_name)
    model = load_model(path, dtype=dtype)
    unmerged = Path(path) / "adapter"
    if (unmerged / "adapter_config.json").is_file():
        model = load_adapter(model, unmerged)
    return model, load_tokenizer(path), str(dtype).removeprefix("torch.")


def check_target_modules(model, target_modules: list[str]) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in leaf_names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"lora.target_modules {missing} not found in the model; its linear layers are: {', '.join(linear)}"
        )


def saved_generation_config(path: str | Path):
    """The generation config saved with a model (its EOS ids), or None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except OSError:
        return None
