"""QLoRA training: the run from rows to a saved adapter and its metrics (the Trainer subclass and its arguments:
trainer.py; pre-flight label checks: preflight.py; checkpoints and curves: checkpoints.py; Liger and torch.compile:
accelerators.py; CUDA-graph steps: step_graphs.py; token-budget batches: batching.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .accelerators import (
    LIGER_KERNELS,
    LIGER_KERNELS_COMPILED,
    compile_decoder_layers,
    compile_enabled,
    compile_whole_forward,
    liger_kernel_enabled,
)
from .batching import TokenBudgetBatchSampler
from .cards import adapter_base_reference, name_adapter_base
from .checkpoints import close_run, last_checkpoint, run_fingerprint, timed_training, training_callbacks
from .config import Params
from .errors import UserError
from .frozen_base import freeze_base
from .fused_dropout import fuse_lora_dropout
from .io import record_weight_digests
from .modeling import (
    check_target_modules,
    device,
    load_model,
    load_tokenizer,
    resolve_dtype,
    saved_generation_config,
)
from .peft_methods import adapter_config, method_of
from .preflight import preflight
from .progress import interactive, use_progress_lines
from .prompts import ChatFormat, Collator, encode_examples, stop_token_ids
from .rows import Example
from .startup import first_work, phase
from .step_graphs import StaticShapeCollator, graphed_steps_for
from .train_config import TrainConfig
from .trainer import EncodedDataset, mean_logged_loss, schedule_arguments, trainer_class


def train_oom_message(cfg: TrainConfig) -> str:
    """What to change when training runs out of GPU memory (pure: tested on CPU)."""
    settings = (
        f"train.micro_batch_size={cfg.micro_batch_size}, train.grad_accum={cfg.grad_accum}, "
        f"train.max_length={cfg.max_length}, train.gradient_checkpointing={str(cfg.gradient_checkpointing).lower()}"
    )
    effective = cfg.micro_batch_size * cfg.grad_accum
    options = []
    if cfg.micro_batch_size > 1:
        micro = cfg.micro_batch_size // 2
        accum = math.ceil(effective / micro)
        options.append(
            f"lower train.micro_batch_size and raise train.grad_accum to keep the effective batch of {effective} "
            f"(e.g. -S train.micro_batch_size={micro} -S train.grad_accum={accum})"
        )
    if not cfg.gradient_checkpointing:
        options.append("set train.gradient_checkpointing=true (slower, much less activation memory)")
    options.append(f"lower train.max_length (now {cfg.max_length}; longer rows are dropped, not cut)")
    return f"out of GPU memory while training with {settings}. To fit: " + "; or ".join(options)


@dataclass(frozen=True)
class SpeedLevers:
    """Settings bench/bench.py measures one at a time beyond params (bench/RESULTS.md); the defaults are what the
    pipeline runs. token_budget: batches of token_budget × micro_batch_size × the mean row length padded tokens
    (1.0: as many rows per step as now, on average) instead of micro_batch_size rows."""

    upcast_fp32: bool | None = None  # peft's float32 upcast of the unquantized weights (None: freeze_base's rule)
    liger_kernel_config: dict | None = None
    compile_mode: str | None = None
    compile_whole_model: bool = False  # instead of each decoder layer
    pad_to_multiple_of: int = 1
    quantize: bool = True  # False: LoRA on the 16-bit base, the ceiling of a fused 4-bit kernel
    token_budget: float | None = None
    record_graphs: bool = True  # False: train.cuda_graphs' step arithmetic without recording graphs (CPU tests)
    cudnn_attention: bool = False  # cuDNN's attention kernels (modeling.configure_attention_backends)
    count_parameters_once: bool = True  # False: the Trainer's own per-step parameter count (trainer.trainer_class)
    fused_dropout: bool = False  # LoRA dropout inside lora_A, keeping a 1-byte mask (fused_dropout.py)


def train_adapter(
    params: Params,
    train_examples: list[Example],
    base_dir: Path,
    adapter_dir: Path | None,
    checkpoint_root: Path,
    live_dir: Path | None,
    callbacks: list | None = None,
    keep_checkpoints: bool = False,
    levers: SpeedLevers | None = None,
) -> dict:
    """Train a LoRA adapter on the 4-bit base; save it (with tokenizer) to adapter_dir. Returns metrics.

    Resumes from the newest complete checkpoint of the same run under checkpoint_root. The run's
    checkpoints are deleted at the end, unless keep_checkpoints: then the run is only marked finished and
    the caller discards it (discard_finished_runs) once its outputs are safely in place.
    `levers`: what bench/bench.py varies beyond params; None is the pipeline's own settings."""
    with phase("imports"):
        from transformers import Trainer

    cfg = params.train
    levers = levers or SpeedLevers()
    tokenizer = load_tokenizer(base_dir)
    with phase("set-up"):
        encoded, collator = training_rows(params, tokenizer, train_examples, base_dir, levers)
    use_liger, use_compile = liger_kernel_enabled(cfg), compile_enabled(cfg)
    compute_dtype = resolve_dtype(params.quant.compute_dtype)
    model = adapted_model(params, base_dir, compute_dtype, use_compile, levers)
    micro_batches = math.ceil(math.ceil(len(encoded) / cfg.num_gpus) / cfg.micro_batch_size * cfg.epochs)
    with phase("set-up"):
        graphed_steps = graphed_steps_for(model, cfg, compute_dtype, use_compile, micro_batches, levers.record_graphs)
        if graphed_steps is not None:
            collator = StaticShapeCollator(tokenizer.pad_token_id, cfg.micro_batch_size)

        run_dir = checkpoint_root / run_fingerprint(params, encoded, base_dir)
        resume_from = last_checkpoint(run_dir)
        if resume_from:
            print(f"resuming training from {resume_from}")
        args = training_arguments(cfg, run_dir, compute_dtype, use_liger, use_compile, levers)
        batches = token_budget_batches(encoded, cfg, levers, graphed=graphed_steps is not None)
        trainer = trainer_class(Trainer, batches, graphed_steps, levers.count_parameters_once)(
            model=model,
            args=args,
            train_dataset=EncodedDataset(encoded),
            data_collator=collator,
            callbacks=training_callbacks(live_dir, resume_from) + list(callbacks or []),
        )
        use_progress_lines(trainer)
    first_work()
    seconds = timed_training(trainer, resume_from, train_oom_message(cfg))

    if adapter_dir is not None:
        save_adapter(model, tokenizer, adapter_dir, base_dir)
    metrics = run_metrics(trainer, encoded, len(train_examples), cfg, seconds, resume_from)
    metrics.update(
        compute_dtype=str(compute_dtype).removeprefix("torch."),
        liger_kernel=use_liger,
        compile=use_compile,
        cuda_graphs=graphed_steps is not None,
    )
    if graphed_steps is not None and graphed_steps.pool is not None:  # recording was asked for
        metrics["graph_replay_ms"] = graphed_steps.replay_ms()
        metrics["graph_shapes"] = sum(entry.graph is not None for entry in graphed_steps.shapes.values())
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    close_run(run_dir, keep_checkpoints)
    return metrics


def training_rows(params: Params, tokenizer, train_examples: list[Example], base_dir: Path, levers: SpeedLevers):
    """The rows that fit train.max_length, encoded, and their collator, after the pre-flight check of what the
    loss will see (preflight.py). Returns (encoded rows, collator)."""
    cfg = params.train
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    every_row, every_example = encode_examples(tokenizer, train_examples, None, chat)
    cfg.report_dropped_rows([len(e.input_ids) for e in every_row])
    kept = [(e, x) for e, x in zip(every_row, every_example, strict=True) if len(e.input_ids) <= cfg.max_length]
    encoded, kept_examples = [e for e, _ in kept], [x for _, x in kept]
    collator = Collator(tokenizer.pad_token_id, levers.pad_to_multiple_of)
    stop_ids = stop_token_ids(tokenizer, saved_generation_config(base_dir))
    preflight(tokenizer, kept_examples, encoded, collator, stop_ids, chat)
    return encoded, collator


def adapted_model(params: Params, base_dir: Path, compute_dtype: torch.dtype, use_compile: bool, levers: SpeedLevers):
    """The 4-bit base, frozen, with a fresh adapter of peft.method on top (compiled if asked)."""
    from peft import get_peft_model
    from transformers import set_seed

    cfg = params.train
    model = load_model(
        base_dir,
        dtype=compute_dtype,
        quant=params.quant if levers.quantize else None,
        cudnn_attention=levers.cudnn_attention,
    )
    check_target_modules(model, method_of(params).adapted_modules(params))
    model = freeze_base(model, compute_dtype, cfg.gradient_checkpointing, levers.upcast_fp32)
    # LoRA A starts random: seed it, or two runs with the same params start from different adapters.
    set_seed(cfg.seed)
    model = get_peft_model(model, adapter_config(params))
    if levers.fused_dropout:
        fuse_lora_dropout(model)
    if use_compile:
        (compile_whole_forward if levers.compile_whole_model else compile_decoder_layers)(model, levers.compile_mode)
    return model


def training_arguments(
    cfg: TrainConfig, run_dir: Path, compute_dtype: torch.dtype, use_liger: bool, use_compile: bool, levers
):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(run_dir),
        **schedule_arguments(cfg),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=compute_dtype == torch.bfloat16 and device().type == "cuda",
        fp16=compute_dtype == torch.float16 and device().type == "cuda",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        remove_unused_columns=False,
        # Frozen 4-bit weights take no gradient; DDP must not wait for them.
        ddp_find_unused_parameters=False,
        # Explicit on CPU: multi-process runs then use DDP over gloo (the launch path CI tests).
        use_cpu=device().type == "cpu",
        report_to="none",
        dataloader_num_workers=0,
        # A bar in a terminal; in a log, lines (progress.use_progress_lines), not carriage-return frames.
        disable_tqdm=not interactive(),
        use_liger_kernel=use_liger,
        liger_kernel_config=levers.liger_kernel_config or (LIGER_KERNELS_COMPILED if use_compile else LIGER_KERNELS),
    )


def token_budget_batches(encoded, cfg: TrainConfig, levers: SpeedLevers, graphed: bool):
    """The bench's token-budget batch sampler (SpeedLevers.token_budget), or None for the Trainer's own batches."""
    if not levers.token_budget:
        return None
    if graphed:
        raise UserError("token-budget batches vary their rows; train.cuda_graphs records fixed shapes")
    if cfg.num_gpus > 1:
        raise UserError("token-budget batches are measured on one GPU only")
    lengths = [len(e.input_ids) for e in encoded]
    max_tokens = round(levers.token_budget * cfg.micro_batch_size * sum(lengths) / len(lengths))
    return TokenBudgetBatchSampler(lengths, max_tokens, cfg.seed, levers.pad_to_multiple_of)


def save_adapter(model, tokenizer, adapter_dir: Path, base_dir: Path) -> None:
    model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(adapter_dir))
    record_weight_digests(adapter_dir)
    # The adapter points at the base by a path relative to the repo root, where stages run.
    name_adapter_base(adapter_dir, *adapter_base_reference(base_dir))


def run_metrics(trainer, encoded, rows_given: int, cfg: TrainConfig, seconds: float, resume_from) -> dict:
    """What the run did, from the Trainer's state: losses, steps, tokens and their rate, how it ran."""
    steps = trainer.state.global_step
    resumed_from_step = int(Path(resume_from).name.split("-")[1]) if resume_from else 0
    tokens_seen = sum(len(e.input_ids) for e in encoded) * cfg.epochs
    tokens_this_run = tokens_seen * (steps - resumed_from_step) / steps if steps else 0
    history = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": mean_logged_loss(trainer.state.log_history),
        "final_loss": history[-1] if history else None,
        "steps": steps,
        "examples": len(encoded),
        "dropped_too_long": rows_given - len(encoded),
        "real_tokens": int(tokens_seen),
        # Timing covers this process only: after a resume, the steps since the checkpoint.
        "seconds": seconds,
        "tokens_per_second": tokens_this_run / seconds if seconds > 0 else None,
        "resumed": bool(resume_from),
        "resumed_from_step": resumed_from_step,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": device().type,
        "num_processes": trainer.args.world_size,
        "effective_batch": cfg.micro_batch_size * cfg.grad_accum * trainer.args.world_size,
    }
