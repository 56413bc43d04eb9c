"""The child side of bench/peers.py: one system's training (or one adapter's evaluation) in this process.

Every system gets the same Params (one recipe), the same base directory and tokenizer, and the same rows: the
rows that fit train.max_length under this project's encoding (the train stage drops longer rows; the others get
the same set). TRL and Unsloth get them as TRL's prompt-completion format: the chat template's prompt as text,
and as completion the rest of the conversation up to and including the end-of-turn token (`<|im_end|>`,
`</s>`), which is what this project supervises, so the loss is on the completion only for all of them. Each
system's own tokenization of those rows is compared with ours, row by row, and recorded.

Unsloth must be imported before transformers, trl and peft: nothing here imports them at module level, and
train_unsloth imports it first.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import time
import traceback
from pathlib import Path

import torch

from qlora_gsm8k.io import file_sha256, read_json, record_weight_digests, write_json
from qlora_gsm8k.modeling import device, load_model, load_tokenizer, resolve_dtype
from qlora_gsm8k.params_file import parse_params
from qlora_gsm8k.peft_methods import adapter_config
from qlora_gsm8k.prompts import IGNORE_INDEX, ChatFormat, conversation_text, encode_examples, prompt_text
from qlora_gsm8k.rows import Example, read_jsonl

VERSIONED = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "liger-kernel",
    "triton",
    "unsloth",
    "unsloth_zoo",
)
TIMING = (
    "loop_seconds: from the Trainer's on_train_begin to its on_train_end callback (torch.cuda.synchronize() at "
    "both ends), the same callback in every system, so model loading, dataset tokenization, the adapter save and "
    "the process start are left out; real_tokens: epochs x the sum of the lengths (every token is real: no "
    "padding) of the training rows as this system tokenized them (its own train_dataset's input_ids; for ours, "
    "the train stage's encoding), not any framework's own token counter; tokens_per_second = real_tokens / "
    "loop_seconds; ms_per_step = 1000 x loop_seconds / optimizer steps; peak_gib: "
    "torch.cuda.max_memory_allocated() over the training loop (reset at on_train_begin); peak_gib_load: the peak "
    "before that (model load)."
)


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def load_setup(setup_file: Path):
    setup = read_json(setup_file)
    return setup, parse_params(setup["params"]), Path(setup["base_dir"])


def kept_rows(tokenizer, params, rows: list[Example]):
    """Our encoding of the rows that fit train.max_length, and those rows: what every system trains on."""
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    encoded, examples = encode_examples(tokenizer, rows, params.train.max_length, chat)
    return encoded, examples, chat


def prompt_completion_rows(tokenizer, examples: list[Example], chat: ChatFormat) -> list[dict]:
    """TRL's (non-conversational) prompt-completion rows: the prompt generation sees, and the answer up to and
    including the end-of-turn token; what the template renders after it (ChatML's newline) is not supervised by
    ours either. TRL tokenizes prompt + completion as one text, so the ids are the conversation's ids."""
    end = tokenizer.convert_ids_to_tokens(chat.end_of_turn_id)
    rows = []
    for example in examples:
        prompt = prompt_text(tokenizer, example.question, chat.system)
        full = conversation_text(tokenizer, example, chat.system)
        if not full.startswith(prompt):
            raise ValueError(f"row {example.index}: the chat template's prompt is not a prefix of the conversation")
        completion = full[len(prompt) :]
        cut = completion.find(end)
        completion = completion[: cut + len(end)] if cut >= 0 else completion + end
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def supervised(row: dict) -> list[int]:
    """A prepared row's labels: TRL builds a labels column; Unsloth keeps the completion mask for its collator."""
    if "labels" in row:
        return list(row["labels"])
    mask = row.get("completion_mask") or [1] * len(row["input_ids"])
    return [t if m else IGNORE_INDEX for t, m in zip(row["input_ids"], mask, strict=True)]


def compare_rows(prepared, encoded) -> dict:
    """How many rows this system tokenized exactly as ours (ids; ids and supervised labels)."""
    rows = [prepared[i] for i in range(len(prepared))]
    same_ids = sum(list(r["input_ids"]) == e.input_ids for r, e in zip(rows, encoded, strict=False))
    same_labels = sum(
        list(r["input_ids"]) == e.input_ids and supervised(r) == e.labels for r, e in zip(rows, encoded, strict=False)
    )
    return {
        "rows": len(rows),
        "rows_with_our_ids": same_ids,
        "rows_with_our_ids_and_labels": same_labels,
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "supervised_tokens": sum(t != IGNORE_INDEX for r in rows for t in supervised(r)),
    }


def loop_recorder():
    """A TrainerCallback timing the training loop and logging every loss; built after Unsloth's import."""
    from transformers import TrainerCallback

    class LoopRecorder(TrainerCallback):
        def __init__(self):
            self.losses, self.loss_steps, self.settings = [], [], {}
            self.start = self.end = self.peak = self.load_peak = None
            self.steps = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                self.load_peak = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                self.loss_steps.append(state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                self.peak = torch.cuda.max_memory_allocated() / 2**30
            self.end = time.perf_counter()
            self.steps = state.global_step
            # Read after training: bitsandbytes sets a 4-bit layer's compute dtype at its first forward pass.
            self.settings = model_settings(model, args)

    return LoopRecorder()


def model_settings(model, args) -> dict:
    """What the run actually used, read from the model and the Trainer's arguments (not from what was asked)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quantized = [m for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None) is not None]
    state = quantized[0].weight.quant_state if quantized else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "num_train_epochs",
        "warmup_steps",
        "weight_decay",
        "max_grad_norm",
        "seed",
        "logging_steps",
        "bf16",
        "fp16",
        "gradient_checkpointing",
        "use_liger_kernel",
        "padding_free",
        "packing",
        "max_length",
        "train_sampling_strategy",
    )
    return {
        **{name: getattr(args, name) for name in names if hasattr(args, name)},
        "optim": getattr(args.optim, "value", str(args.optim)),
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
        "gradient_checkpointing_kwargs": args.gradient_checkpointing_kwargs,
        "model_is_gradient_checkpointing": bool(getattr(base, "is_gradient_checkpointing", False)),
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "quant_type": getattr(state, "quant_type", None),
        "double_quant": bool(getattr(state, "nested", False)) if state is not None else None,
        "compute_dtype": str(_quantization(base, "bnb_4bit_compute_dtype")).removeprefix("torch."),
        "double_quant_configured": _quantization(base, "bnb_4bit_use_double_quant"),
        "adapter_dtype": str(trainable[0].dtype).removeprefix("torch.") if trainable else None,
        "trainable_params": sum(p.numel() for p in trainable),
    }


def _quantization(model, key: str):
    """A key of the bitsandbytes config the model was loaded with (an object or, after a save, a dict)."""
    config = getattr(model.config, "quantization_config", None)
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def trainer_config(params, out: Path, **overrides):
    """TRL's SFTConfig with the recipe's numbers; everything not named here is TRL's default."""
    from trl import SFTConfig

    from qlora_gsm8k.trainer import schedule_arguments  # after trl: Unsloth's process imports unsloth first

    cfg = params.train
    compute_dtype = resolve_dtype(params.quant.compute_dtype)
    kwargs = dict(
        output_dir=str(out / "trainer"),
        **schedule_arguments(cfg),
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=cfg.max_length,
        # TRL's default is bf16 unless fp16; on CPU (the smoke) it follows our compute dtype, float32.
        bf16=compute_dtype == torch.bfloat16 and device().type == "cuda",
        save_strategy="no",  # the adapter is saved once at the end, as ours does (ours also checkpoints)
        report_to="none",
        disable_tqdm=True,
    )
    return SFTConfig(**{**kwargs, **overrides})


def sft_train(trainer, recorder, encoded, params, out: Path, settings: dict, tokenizer, base_dir: Path) -> dict:
    """Train an SFTTrainer built by the caller and collect what every system records. The adapter is saved with
    the base's tokenizer, as ours is, so that every adapter is evaluated with the same one."""
    rows = compare_rows(trainer.train_dataset, encoded)
    trainer.train()
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter), safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(str(adapter))
    record_weight_digests(adapter)
    settings = {
        **settings,
        "padding_free_used": bool(getattr(trainer.args, "padding_free", False)),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
    return finish(recorder, rows, params, adapter, settings)


def finish(recorder, rows: dict, params, adapter: Path, settings: dict) -> dict:
    seconds = recorder.end - recorder.start
    real_tokens = rows["tokens"] * params.train.epochs
    return {
        "status": "ok",
        "settings": settings,
        "used": recorder.settings,
        "steps": recorder.steps,
        "loop_seconds": seconds,
        "ms_per_step": 1000 * seconds / recorder.steps if recorder.steps else None,
        "real_tokens": real_tokens,
        "tokens_per_second": real_tokens / seconds if seconds > 0 else None,
        "row_check": rows,
        "losses": recorder.losses,
        "loss_steps": recorder.loss_steps,
        "peak_gib": recorder.peak,
        "peak_gib_load": recorder.load_peak,
        "adapter_dir": str(adapter),
        "timing": TIMING,
    }


def train_ours(params, base_dir: Path, encoded, examples, out: Path, changes=None, **levers) -> dict:
    """This project's train stage code with its defaults (bench/bench.py's train_ours); `changes` to params.yaml's
    train section and bench levers for the variants of issue 27 (ours-graphs and its parts)."""
    from bench.bench import train_ours as bench_train_ours

    recorder = loop_recorder()
    metrics = bench_train_ours(
        params, base_dir, examples, out, "ours", changes=changes, extra_callbacks=[recorder], **levers
    )
    rows = compare_rows([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded], encoded)
    tokenizer = load_tokenizer(base_dir)
    settings = {
        "trainer": "qlora_gsm8k.training.train_adapter (the train stage's code)",
        "liger_kernel": metrics["liger_kernel"],
        "cuda_graphs": metrics["cuda_graphs"],
        "graph_replay_ms": metrics.get("graph_replay_ms"),
        "graph_shapes": metrics.get("graph_shapes"),
        "changes": changes or {},
        "levers": levers,
        "padding_free_used": False,
        "group_by_length": params.train.group_by_length,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
    }
    return finish(recorder, rows, params, out / "ours-adapter", settings)


def train_trl(params, base_dir: Path, encoded, examples, chat, out: Path, tuned: bool) -> dict:
    """TRL's SFTTrainer + PEFT on the bitsandbytes NF4 base: TRL's defaults, or tuned as TRL's docs advise."""
    from datasets import Dataset
    from trl import SFTTrainer

    tokenizer = load_tokenizer(base_dir)
    compute_dtype = resolve_dtype(params.quant.compute_dtype)
    model = load_model(base_dir, dtype=compute_dtype, quant=params.quant)
    overrides = {"eos_token": tokenizer.convert_ids_to_tokens(chat.end_of_turn_id)}
    liger = tuned and torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if tuned:
        # padding_free without packing refuses a max_length; every row already fits it (see kept_rows).
        overrides.update(gradient_checkpointing=False, padding_free=True, use_liger_kernel=liger, max_length=None)
    recorder = loop_recorder()
    trainer = SFTTrainer(
        model=model,
        args=trainer_config(params, out, **overrides),
        train_dataset=Dataset.from_list(prompt_completion_rows(tokenizer, examples, chat)),
        processing_class=tokenizer,
        peft_config=adapter_config(params),
        callbacks=[recorder],
    )
    settings = {
        "trainer": "trl.SFTTrainer, peft_config=LoraConfig, NF4 base from BitsAndBytesConfig",
        "liger_kernel": liger,
        "liger_kernel_note": None if liger or not tuned else "liger-kernel not importable or no CUDA GPU: left out",
    }
    return sft_train(trainer, recorder, encoded, params, out, settings, tokenizer, base_dir)


def train_unsloth(params, base_dir: Path, encoded, examples, chat, out: Path, lora_dropout: float | None) -> dict:
    """Unsloth's FastLanguageModel (4-bit load, get_peft_model with its defaults: its own gradient checkpointing)
    trained with TRL's SFTTrainer, as Unsloth's notebooks do."""
    import unsloth  # noqa: F401 - first, so that it can patch transformers, peft and trl
    from datasets import Dataset
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    cfg, lora = params.train, params.lora
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(base_dir), max_seq_length=cfg.max_length, dtype=None, load_in_4bit=True, random_state=cfg.seed
    )
    dropout = lora.dropout if lora_dropout is None else lora_dropout
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=cfg.seed,
        use_rslora=params.peft.method == "rslora" or lora.use_rslora,
    )
    recorder = loop_recorder()
    trainer = SFTTrainer(
        model=model,
        args=trainer_config(params, out, eos_token=tokenizer.convert_ids_to_tokens(chat.end_of_turn_id)),
        train_dataset=Dataset.from_list(prompt_completion_rows(tokenizer, examples, chat)),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    settings = {
        "trainer": "unsloth.FastLanguageModel + its patched trl.SFTTrainer",
        "use_gradient_checkpointing": "unsloth",
        "lora_dropout": dropout,
    }
    return sft_train(trainer, recorder, encoded, params, out, settings, tokenizer, base_dir)


SYSTEMS = {
    "ours": lambda p, b, enc, ex, chat, out: train_ours(p, b, enc, ex, out),
    # The eager step (train.cuda_graphs=false): the default before run 2 (bench/PEERS.md), `ours` in runs 1-2.
    "ours-eager": lambda p, b, enc, ex, chat, out: train_ours(p, b, enc, ex, out, {"train": {"cuda_graphs": False}}),
    # Issue 27's levers: each step recorded as a CUDA graph (fixed shapes, chunked LM head and loss), with and
    # without Liger's RMSNorm/SwiGLU kernels; and the same fixed shapes and loss run eagerly (what the graph adds).
    "ours-graphs": lambda p, b, enc, ex, chat, out: train_ours(p, b, enc, ex, out, {"train": {"cuda_graphs": True}}),
    "ours-graphs-noliger": lambda p, b, enc, ex, chat, out: train_ours(
        p, b, enc, ex, out, {"train": {"cuda_graphs": True, "liger_kernel": False}}
    ),
    "ours-static-eager": lambda p, b, enc, ex, chat, out: train_ours(
        p, b, enc, ex, out, {"train": {"cuda_graphs": True}}, record_graphs=False
    ),
    # LoRA dropout inside lora_A, a bool mask kept instead of a dropped copy (same masks); and, not the recipe,
    # no dropout at all: what the activations of the dropout cost.
    "ours-graphs-fused-dropout": lambda p, b, enc, ex, chat, out: train_ours(
        p, b, enc, ex, out, {"train": {"cuda_graphs": True}}, fused_dropout=True
    ),
    # Gradient checkpointing inside the recorded step (the memory lever the graph path lacked before torch 2.10).
    "ours-graphs-checkpointing": lambda p, b, enc, ex, chat, out: train_ours(
        p, b, enc, ex, out, {"train": {"cuda_graphs": True, "gradient_checkpointing": True}}
    ),
    "ours-graphs-dropout0": lambda p, b, enc, ex, chat, out: train_ours(
        p, b, enc, ex, out, {"train": {"cuda_graphs": True}, "lora": {"dropout": 0.0}}
    ),
    "trl-defaults": lambda p, b, enc, ex, chat, out: train_trl(p, b, enc, ex, chat, out, tuned=False),
    "trl-tuned": lambda p, b, enc, ex, chat, out: train_trl(p, b, enc, ex, chat, out, tuned=True),
    "unsloth": lambda p, b, enc, ex, chat, out: train_unsloth(p, b, enc, ex, chat, out, lora_dropout=None),
    # Not the recipe (LoRA dropout off): Unsloth's fast LoRA kernels need dropout 0; named so it is never mistaken.
    "unsloth-dropout0": lambda p, b, enc, ex, chat, out: train_unsloth(p, b, enc, ex, chat, out, lora_dropout=0.0),
}


def run_training(system: str, setup_file: Path, out: Path) -> dict:
    start = time.perf_counter()
    setup, params, base_dir = load_setup(setup_file)
    if system.startswith("unsloth"):
        import unsloth  # noqa: F401 - before load_tokenizer imports transformers (fails at once without a GPU)
    tokenizer = load_tokenizer(base_dir)
    encoded, examples, chat = kept_rows(tokenizer, params, read_jsonl(setup["train_file"]))
    result = SYSTEMS[system](params, base_dir, encoded, examples, chat, out)
    result["wall_seconds"] = time.perf_counter() - start
    return result


def adapter_tensor_names(adapter_dir: Path) -> set[str]:
    from qlora_gsm8k.sources import safetensors_header

    return set(safetensors_header(adapter_dir / "adapter_model.safetensors")) - {"__metadata__"}


def _after_layers(name: str) -> str:
    at = name.find("layers.")
    return name[at:] if at >= 0 else name


def loadable_adapter(adapter_dir: Path, reference_dir: Path | None, out: Path) -> tuple[Path, str]:
    """The adapter with ours' tensor names: as saved when they match; else renamed by what follows `layers.`
    (the same modules under another prefix) into out/adapter-renamed. Refused when the modules differ."""
    if reference_dir is None or not (reference_dir / "adapter_model.safetensors").is_file():
        return adapter_dir, "the reference" if reference_dir is None else "not compared: ours has no adapter"
    names, ours = adapter_tensor_names(adapter_dir), adapter_tensor_names(reference_dir)
    if names == ours:
        return adapter_dir, "the same tensor names as ours"
    by_suffix = {_after_layers(n): n for n in ours}
    if len(by_suffix) != len(ours) or {_after_layers(n) for n in names} != set(by_suffix):
        raise ValueError(
            f"the adapter's tensors are not ours: only in it {sorted(names - ours)[:3]}, only in ours "
            f"{sorted(ours - names)[:3]}"
        )
    from safetensors.torch import load_file, save_file

    renamed = out / "adapter-renamed"
    renamed.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    save_file({by_suffix[_after_layers(k)]: v for k, v in tensors.items()}, str(renamed / "adapter_model.safetensors"))
    for other in adapter_dir.iterdir():  # config, tokenizer
        if other.is_file() and other.suffix != ".safetensors" and other.name != "weights.sha256.json":
            shutil.copyfile(other, renamed / other.name)
    record_weight_digests(renamed)
    example = next(iter(sorted(names - ours)))
    return (
        renamed,
        f"{len(names - ours)} tensor names renamed to ours (e.g. {example} -> {by_suffix[_after_layers(example)]})",
    )


def run_evaluation(
    system: str, setup_file: Path, out: Path, adapter_dir: Path, reference_dir: Path | None, eval_as: str
) -> dict:
    """Our evaluator on the adapter as bench/quality.py runs it: `dequantized`, merged into the dequantized NF4
    weights (the merge stage's default, what the pipeline evaluates and ships; its merge check is recorded), or
    `adapter`, on the 4-bit base it was trained on (slower to generate with)."""
    from qlora_gsm8k.eval_rows import normalise_rows, solution_examples
    from qlora_gsm8k.evaluation import evaluate_model
    from qlora_gsm8k.merging import load_with_adapter, merge_adapter

    setup, params, base_dir = load_setup(setup_file)
    test = read_jsonl(setup["test_file"])
    adapter, names_note = loadable_adapter(adapter_dir, reference_dir, out)
    tokenizer = load_tokenizer(base_dir)  # every system is asked with the same tokenizer and template
    check = None
    if eval_as == "adapter":
        model = load_with_adapter(base_dir, adapter, params.eval.dtype, quant=params.quant)
    else:
        model, _, check = merge_adapter(base_dir, adapter, test[: params.eval.merge_check_size], params)
    start = time.perf_counter()
    eval_rows = normalise_rows("gsm8k", [e.to_json() for e in test], setup["test_file"])
    solutions = solution_examples(eval_rows)
    scored, rows, summary = evaluate_model(model, tokenizer, eval_rows, solutions, params, "tuned", "")
    perplexity = scored["tuned"]
    seconds = time.perf_counter() - start
    with open(out / "generations.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return {
        "status": "ok",
        "adapter_evaluated": str(adapter),
        "adapter_names": names_note,
        "evaluated_as": eval_as,
        "merge_check": check,
        "questions": len(rows),
        "exact_match_strict": summary["exact_match_strict"],
        "exact_match_flexible": summary["exact_match_flexible"],
        "hit_token_cap_rate": summary["hit_token_cap_rate"],
        "mean_new_tokens": summary["mean_new_tokens"],
        "perplexity": perplexity["perplexity"],
        "seconds": seconds,
        "eval_dtype": str(resolve_dtype(params.eval.dtype)).removeprefix("torch."),
        "max_new_tokens": params.eval.max_new_tokens,
        "correct_strict": [bool(r["correct_strict"]) for r in rows],
        "correct_flexible": [bool(r["correct_flexible"]) for r in rows],
    }


def child_main(mode: str, system: str, setup_file: Path, out: Path, result_file: Path, **eval_args) -> int:
    """Run one system and write its result; a failure is written as the result, with its error and traceback."""
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if mode == "train":
            result = run_training(system, setup_file, out)
        else:
            result = run_evaluation(system, setup_file, out, **eval_args)
        code = 0
    except BaseException as err:  # noqa: BLE001 - the comparison records every failure and goes on
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        code = 1
    # The setup it ran with: bench/peers.py --reuse keeps a result only for the same params, rows and base.
    result.update(system=system, versions=versions(), device=_device_name(), setup_sha256=file_sha256(setup_file))
    write_json(result_file, _finite(result))
    return code


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _finite(value):
    """JSON has no NaN: a NaN loss is written as null (and shows as a failed curve)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
