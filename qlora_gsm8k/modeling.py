"""Model and tokenizer loading in one place: the base materialised on disk, 16-bit or 4-bit loads,
and the one factory that turns params into bitsandbytes and LoRA configs (QLoRA = LoRA + quant)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from .config import TINY_LLAMA, LoraConfig, ModelConfig, QuantConfig, model_kind
from .errors import UserError
from .hub import local_cache_only

# Chat template shared by the tiny model; the same shape as TinyLlama-Chat's (Zephyr style).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def device() -> torch.device:
    """This process's device: under DDP each rank owns the GPU of its LOCAL_RANK."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# PyTorch picks cuDNN's attention first on Hopper. cuDNN builds an execution plan for every new sequence
# length, about 2 ms of CPU per layer call (profiled on an H200, bench/RESULTS.md), and every batch of
# length-grouped training rows, and every generated token, is a new length: off, the flash and
# memory-efficient kernels do the same work with no planning. The benchmark flips it to measure both.
CUDNN_ATTENTION = False


def configure_attention_backends() -> None:
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(CUDNN_ATTENTION)


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' is bfloat16 where the GPU supports it, float32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def build_tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in code on synthetic word problems (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .synthetic import make_rows

    corpus = [row["question"] + "\n" + row["answer"] for row in make_rows(2000, seed=1234)]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_tiny_llama(seed: int = 0):
    """A random-weight Llama small enough to train on CPU in seconds, with its own tokenizer."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = build_tiny_llama_config(tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_tiny_llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def ensure_distinct_pad(tokenizer) -> None:
    """pad == eos would mask every EOS label and the model would never learn to stop.
    Reuse <unk> as pad where the vocabulary has one, so no embedding has to grow."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token_id is None or tokenizer.unk_token_id == tokenizer.eos_token_id:
        raise UserError("the tokenizer has no pad or unk token distinct from EOS; add one to the base model")
    tokenizer.pad_token = tokenizer.unk_token


def _hub_error(cfg: ModelConfig, err: Exception) -> UserError:
    return UserError(
        f"cannot load model {cfg.name!r} (revision {cfg.revision}) from the Hugging Face Hub "
        f"({type(err).__name__}: not reachable, or not in the local cache when offline). Set model.name to "
        f"a local model directory (config.json, tokenizer and *.safetensors weights) or to '{TINY_LLAMA}', "
        f"e.g. dvc exp run -S model.name=/path/to/model"
    )


def hf_token() -> str | None:
    """The Hub token comes from the environment only (never params.yaml, never a file of this project)."""
    return os.environ.get("HF_TOKEN") or None


def _hub_kwargs(cfg: ModelConfig) -> dict:
    """Pinned revision, the env token, and the local cache only when the Hub cannot be reached (seconds,
    instead of a minute of retries before the same error)."""
    return {"revision": cfg.revision, "token": hf_token(), "local_files_only": local_cache_only()}


def _check_local_model_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(f"model.name {name!r} is not a directory; point it at a saved model or use '{TINY_LLAMA}'")
    if not (path / "config.json").is_file():
        raise UserError(f"model.name {name!r} is not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise UserError(
            f"model.name {name!r} has no *.safetensors weights; only safetensors are loaded (pickled "
            "*.bin/*.pt weights can run code when loaded). Convert them, e.g. "
            "model.save_pretrained(dir, safe_serialization=True) in a trusted environment"
        )
    return path


def source_model_config(cfg: ModelConfig):
    """The configured base's architecture config, without loading weights: a seconds-long check that the
    model exists (offline too) and what its modules are called."""
    from transformers import AutoConfig

    kind = model_kind(cfg.name)
    if kind == "tiny":
        return build_tiny_llama_config(build_tiny_tokenizer())
    if kind == "local":
        path = _check_local_model_dir(cfg.name)
        try:
            return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the config of model {cfg.name!r}: {err}".splitlines()[0]) from None
    try:
        return AutoConfig.from_pretrained(cfg.name, trust_remote_code=False, **_hub_kwargs(cfg))
    except OSError as err:
        raise _hub_error(cfg, err) from None
    except ValueError as err:
        raise UserError(f"cannot use model {cfg.name!r}: {err}".splitlines()[0]) from None


def check_model_source(cfg: ModelConfig, target_modules: list[str]) -> None:
    """The model can be found (locally or in the Hub cache when offline) and has lora.target_modules."""
    try:
        skeleton = skeleton_from_config(source_model_config(cfg))
    except ValueError as err:
        raise UserError(f"model {cfg.name!r} is not a causal language model: {err}".splitlines()[0]) from None
    check_target_modules(skeleton, target_modules)


# What the base stage takes from a model directory or Hub snapshot: safetensors weights (never pickles), the
# configs and the tokenizer files.
_SOURCE_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def source_model_dir(cfg: ModelConfig) -> Path:
    """The configured base on local disk: the directory itself, or the Hub snapshot at the pinned revision
    (downloaded once into the Hugging Face cache; from the cache alone when the Hub is unreachable)."""
    if model_kind(cfg.name) == "local":
        return _check_local_model_dir(cfg.name)
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(cfg.name, allow_patterns=_SOURCE_FILES, **_hub_kwargs(cfg)))
    except (OSError, ValueError) as err:
        raise _hub_error(cfg, err) from None
    if not any(path.glob("*.safetensors")):
        raise UserError(
            f"model {cfg.name!r} (revision {cfg.revision}) has no *.safetensors weights; only safetensors are "
            "loaded (pickled weights can run code when loaded): pick a revision or a model that has them"
        )
    return path


def materialise_base(cfg: ModelConfig, out_dir: Path) -> int:
    """Write the base to out_dir as every later stage reads it; returns its parameter count.

    The weight files are copied as they are, not loaded and saved again: the same tensors, at the cost of a
    file copy instead of a 2.2 GB load and save (TinyLlama). Only the tokenizer and the configs are
    rewritten, to give the tokenizer a pad token distinct from EOS."""
    if model_kind(cfg.name) == "tiny":
        model, tokenizer = build_tiny_llama()
        save_base(model, tokenizer, out_dir)
        return sum(p.numel() for p in model.parameters())
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    src = source_model_dir(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
        config = AutoConfig.from_pretrained(str(src), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model from {cfg.name!r}: {err}".splitlines()[0]) from None
    try:
        generation = GenerationConfig.from_pretrained(str(src))
    except OSError:  # no generation_config.json: what from_pretrained of the model would derive
        generation = GenerationConfig.from_model_config(config)
    set_distinct_pad(tokenizer, config, generation)
    weights = sorted(src.glob("*.safetensors"))
    for f in [*weights, *src.glob("*.safetensors.index.json")]:
        shutil.copyfile(f, out_dir / f.name)
    config.save_pretrained(out_dir)
    generation.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return safetensors_parameter_count(weights)


def safetensors_parameter_count(files: list[Path]) -> int:
    """Parameters in safetensors files, from their JSON headers (8-byte length, then the header) alone."""
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


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
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
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


def lora_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model(path: str | Path, dtype: torch.dtype, quant: QuantConfig | None = None):
    """Load a saved model: 16-bit (or fp32) when `quant` is None, else bitsandbytes 4-bit."""
    from transformers import AutoModelForCausalLM

    configure_attention_backends()
    kwargs = {}
    if quant is not None:
        kwargs["quantization_config"] = quantization_config(quant)
        dtype = resolve_dtype(quant.compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype,
        device_map={"": device()},
        use_safetensors=True,
        trust_remote_code=False,
        **kwargs,
    )
    return model


def skeleton_from_config(config):
    """A model's architecture on the meta device: module names without memory or weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def load_for_eval(path: str | Path, dtype_name: str):
    """A saved model and its tokenizer as both evaluation stages run them; returns (model, tokenizer, precision)."""
    dtype = resolve_dtype(dtype_name)
    return load_model(path, dtype=dtype), load_tokenizer(path), str(dtype).removeprefix("torch.")


def check_target_modules(model, target_modules: list[str]) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in leaf_names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"lora.target_modules {missing} not found in the model; its linear layers are: {', '.join(linear)}"
        )
