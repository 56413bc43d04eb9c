"""Loading a base model from where it comes from, and the base stage's copy of it: a Hugging Face Hub id at a pinned
revision, a local model directory, a local GGUF file (dequantized once). Which of them a model.name is, and the
built-in tiny-llama: model_sources. Every later stage reads the plain model directory this writes."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import torch

from .config import TINY_LLAMA, ModelConfig
from .errors import UserError
from .hub import local_cache_only
from .local_paths import missing_path_error
from .modeling import save_base, set_distinct_pad
from .prompts import end_of_turn_id
from .startup import first_work, phase


def _hub_error(cfg: ModelConfig, err: Exception) -> UserError:
    return UserError(
        f"cannot load model {cfg.name!r} (revision {cfg.revision}) from the Hugging Face Hub "
        f"({type(err).__name__}: not reachable, or not in the local cache when offline). Set model.name to "
        f"a local model directory (config.json, tokenizer and *.safetensors weights), a local .gguf file or "
        f"'{TINY_LLAMA}', e.g. dvc exp run -S model.name=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def hf_token() -> str | None:
    """The Hub token comes from the environment only (never params.yaml, never a file of this project)."""
    return os.environ.get("HF_TOKEN") or None


def _hub_kwargs(cfg: ModelConfig) -> dict:
    """Pinned revision, the env token, and the local cache only when the Hub cannot be reached (seconds,
    instead of a minute of retries before the same error)."""
    return {"revision": cfg.revision, "token": hf_token(), "local_files_only": local_cache_only()}


def checked_local_model_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.exists():
        raise missing_path_error("model.name", name)
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
    for weights in sorted(path.glob("*.safetensors")):
        safetensors_header(weights)
    return path


def safetensors_header(path: Path) -> dict:
    """A safetensors file's JSON header (8-byte little-endian length, then the JSON): read without loading a
    tensor, and refused in one line when the file is not safetensors at all (a renamed pickle, a truncated copy)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        raw = fh.read(length) if 2 <= length <= min(size - 8, 100 * 2**20) else b""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise UserError(
            f"{path} is not a safetensors file (its first bytes are no safetensors header); replace it with the "
            "model's real weights, e.g. model.save_pretrained(dir, safe_serialization=True)"
        )
    return header


def read_from_dir(what: str, path: Path, name: str):
    """The `what` ("config" or "tokenizer") of the model directory `path`, `name` as model.name gave it; never code."""
    from transformers import AutoConfig, AutoTokenizer

    auto = {"config": AutoConfig, "tokenizer": AutoTokenizer}[what]
    try:
        return auto.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the {what} of model {name!r}: {err}".splitlines()[0]) from None


def hub_config(cfg: ModelConfig):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(cfg.name, trust_remote_code=False, **_hub_kwargs(cfg))
    except OSError as err:
        raise _hub_error(cfg, err) from None
    except ValueError as err:
        raise UserError(f"cannot use model {cfg.name!r}: {err}".splitlines()[0]) from None


# What the base stage takes from a model directory or Hub snapshot: safetensors weights (never pickles), the
# configs and the tokenizer files.
_SOURCE_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def hub_snapshot(cfg: ModelConfig) -> Path:
    """The Hub model's files at the pinned revision (downloaded once into the Hugging Face cache; from the cache
    alone when the Hub is unreachable)."""
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


def copy_model_dir(src: Path, name: str, out_dir: Path) -> int:
    """Write the model directory `src` to out_dir as every later stage reads it; returns its parameter count.

    The weight files are copied as they are, not loaded and saved again: the same tensors, at the cost of a
    file copy instead of a 2.2 GB load and save (TinyLlama). Only the tokenizer and the configs are
    rewritten, to give the tokenizer a pad token distinct from EOS."""
    with phase("imports"):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    with phase("model load"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
            config = AutoConfig.from_pretrained(str(src), trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load model from {name!r}: {err}".splitlines()[0]) from None
        try:
            generation = GenerationConfig.from_pretrained(str(src))
        except OSError:  # no generation_config.json: what from_pretrained of the model would derive
            generation = GenerationConfig.from_model_config(config)
    set_distinct_pad(tokenizer, config, generation)
    first_work()
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
        header = safetensors_header(f)
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def checked_gguf_file(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.exists():
        raise missing_path_error("model.name", name)
    if not path.is_file():
        raise UserError(f"model.name {name!r} is not a file; point it at a .gguf model file")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a .gguf model needs the 'gguf' package: pip install -r requirements.txt")
    return path


def _gguf_error(path: Path, err: Exception) -> UserError:
    return UserError(f"cannot read the GGUF model {str(path)!r}: {err}".splitlines()[0])


# What transformers raises on a file it cannot read as GGUF.
_GGUF_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


def read_gguf(path: Path, config_only: bool = False):
    """A GGUF file's model, dequantized to bfloat16 (the dtype such models ship in); or only its config."""
    with phase("imports"):
        from transformers import AutoConfig, AutoModelForCausalLM

    folder, name = str(path.parent), path.name
    try:
        if config_only:
            return AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        # GGUF is a tensor format like safetensors: reading it runs no code.
        return AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.bfloat16, trust_remote_code=False
        )
    except _GGUF_ERRORS as err:
        raise _gguf_error(path, err) from None


def gguf_tokenizer(path: Path):
    """A GGUF file's tokenizer with the EOS its chat template ends turns with: GGUF metadata can name the wrong
    one (SmolLM2-135M-Instruct's says `<|im_start|>`, the model ends its turns with `<|im_end|>`)."""
    with phase("imports"):
        from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    except _GGUF_ERRORS as err:
        raise _gguf_error(path, err) from None
    end_of_turn = end_of_turn_id(tokenizer)
    if end_of_turn != tokenizer.eos_token_id:
        token = tokenizer.convert_ids_to_tokens(end_of_turn)
        print(f"{path.name}: its metadata names EOS {tokenizer.eos_token!r}; using {token!r}, which ends chat turns")
        tokenizer.eos_token = token
    return tokenizer


def hub_tokenizer(cfg: ModelConfig):
    """The Hub model's tokenizer files alone, not its weights."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(cfg.name, trust_remote_code=False, **_hub_kwargs(cfg))
    except OSError as err:
        raise _hub_error(cfg, err) from None


def materialise_gguf(path: Path, out_dir: Path) -> int:
    """Dequantize a GGUF model once into a plain directory (bf16 safetensors, tokenizer, chat template), with
    the EOS gguf_tokenizer takes from the chat template. transformers flags a GGUF-loaded model as quantized;
    the flag goes before saving, the weights are plain."""
    with phase("model load"):
        tokenizer = gguf_tokenizer(path)
        model = read_gguf(path)
    first_work()
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    save_base(model, tokenizer, out_dir)
    return sum(p.numel() for p in model.parameters())
