"""GRPO after SFT (the rl stage): TRL's GRPOTrainer continues the SFT adapter on the frozen 4-bit base, sampling
rl.group_size completions per train question and rewarding each with qlora_gsm8k.rewards (the evaluator's strict
answer, and stopping after it). The reference of its KL term is a frozen copy of the SFT adapter (TRL adds it as the
"ref" adapter when it is given a PeftModel and rl.kl_beta > 0), so the penalty keeps the policy near what SFT learned,
not near the base."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .cards import adapter_base_reference, name_adapter_base
from .checkpoints import close_run, fingerprint, last_checkpoint, timed_training, training_callbacks
from .config import Params
from .errors import UserError
from .frozen_base import freeze_base
from .io import record_weight_digests
from .modeling import device, load_adapter, load_model, load_tokenizer, resolve_dtype, saved_generation_config
from .params_file import params_as_dict
from .progress import interactive, use_progress_lines
from .prompts import ChatFormat, prompt_text, stop_token_ids
from .rewards import Gsm8kRewards
from .rows import Example, final_number
from .startup import first_work
from .train_config import RLConfig

# What GRPOTrainer logs each step that is worth a curve: the reward and each of its terms (rewards/answer/mean is the
# accuracy of the sampled completions), the KL to the SFT adapter, the completions' length and how many hit the cap.
RL_CURVES = (
    "loss",
    "reward",
    "reward_std",
    "rewards/answer/mean",
    "rewards/format/mean",
    "kl",
    "completions/mean_length",
    "completions/clipped_ratio",
    "entropy",
    "learning_rate",
    "grad_norm",
    "sampling_seconds",
)
_FINGERPRINT_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl")


def rl_questions(cfg: RLConfig, train_examples: list[Example]) -> list[Example]:
    chosen = train_examples[cfg.offset : cfg.offset + cfg.questions]
    if len(chosen) < cfg.questions:
        raise UserError(
            f"rl.questions={cfg.questions} from rl.offset={cfg.offset}: the train slice holds {len(train_examples)} "
            f"rows, so only {len(chosen)} are there; lower rl.questions or raise data.train_size"
        )
    return chosen


def prompt_rows(tokenizer, examples: list[Example], chat: ChatFormat) -> list[dict]:
    """GRPOTrainer's rows: the prompt as text exactly as evaluation renders it, and the reference number. TRL
    tokenizes a text prompt with the tokenizer's own special tokens; checked here to give evaluation's ids (a chat
    template that writes its own BOS would get a second one from the tokenizer)."""
    rows = []
    for example in examples:
        prompt = prompt_text(tokenizer, example.question, chat.system)
        if tokenizer(prompt)["input_ids"] != chat.ids(tokenizer, prompt):
            raise UserError(
                f"train row {example.index}: the prompt tokenizes differently with the tokenizer's special tokens "
                "(as TRL's GRPOTrainer tokenizes it) than as evaluation feeds it; the chat template and the "
                "tokenizer's BOS disagree"
            )
        rows.append({"prompt": prompt, "number": final_number(example.answer)})
    return rows


def policy_model(params: Params, base_dir: Path, adapter_dir: Path, compute_dtype: torch.dtype, stop_ids: list[int]):
    """The frozen 4-bit base with the SFT adapter on top, trainable; sampling stops at the ids evaluation stops at."""
    model = load_model(base_dir, dtype=compute_dtype, quant=params.quant)
    model = freeze_base(model, compute_dtype, gradient_checkpointing=False)
    model = load_adapter(model, adapter_dir, trainable=True)
    model.generation_config.eos_token_id = stop_ids
    return model


def keep_float32(model) -> None:
    """TRL casts a quantized model's trainable adapter weights to bf16 (the QLoRA paper's advice). At RL's learning
    rates that freezes much of the adapter: an Adam step of ~1e-5 on a LoRA A weight of ~0.1 is far below bf16's
    spacing there (~5e-4), so it rounds away. The train stage trains them in float32; so does this one."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def grpo_arguments(cfg: RLConfig, run_dir: Path):
    from trl import GRPOConfig

    completions = cfg.questions_per_step * cfg.group_size
    on_gpu = device().type == "cuda"
    return GRPOConfig(
        output_dir=str(run_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=completions // cfg.micro_batch_size,
        num_generations=cfg.group_size,
        num_iterations=cfg.updates_per_sample,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        # Constant after a short warmup, as DeepSeekMath's GRPO ran: the reward decides when to stop, not a schedule.
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(5, cfg.steps - 1),
        beta=cfg.kl_beta,
        reward_weights=[1.0, cfg.format_reward],
        # Sampling and the policy's log-probs must see the same network: no dropout in either.
        disable_dropout=True,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # No autocast and no cast of the model before sampling (which TRL does under bf16/fp16 and which would round
        # the adapter again): the base already computes in compute_dtype, the adapter stays float32 (keep_float32).
        bf16=False,
        fp16=False,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=not interactive(),
    )


def clock_sampling(trainer) -> bool:
    """Log the seconds each step spends sampling its completions as `sampling_seconds` beside GRPOTrainer's own
    per-step numbers, so a step's time splits into sampling and the rest (rewards, log-probs, the update): TRL times
    its generation only for W&B, MLflow or Trackio. Its sampling method and metrics store are internal (`_generate`,
    `_metrics`): where a TRL version lacks either, nothing is clocked and this returns False."""
    generate, logged = getattr(trainer, "_generate", None), getattr(trainer, "_metrics", None)
    if not callable(generate) or not isinstance(logged, dict) or "train" not in logged:
        return False

    def clocked(*args, **kwargs):
        start = time.perf_counter()
        result = generate(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        logged["train"]["sampling_seconds"].append(time.perf_counter() - start)
        return result

    trainer._generate = clocked
    return True


def rl_fingerprint(params: Params, rows: list[dict], base_dir: Path, adapter_dir: Path) -> str:
    """Identifies an RL run, so a checkpoint is only resumed into the run that wrote it: the rl, prompt and quant
    params, the rows, the base's and the SFT adapter's files, the library versions (TRL's too)."""
    cfg = params_as_dict(params)
    settings = {k: cfg[k] for k in ("rl", "prompt", "quant")}
    return fingerprint(settings, rows, [base_dir, adapter_dir], _FINGERPRINT_PACKAGES)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sampling_per_step(passes: list[dict], steps: int) -> float | None:
    clocked = [h["sampling_seconds"] for h in passes if "sampling_seconds" in h]
    return sum(clocked) / steps if clocked and steps else None


def rl_metrics(log_history: list[dict], cfg: RLConfig, seconds: float, resumed_from_step: int) -> dict:
    """The run's numbers from GRPOTrainer's per-step logs: each curve's mean over the first and the last tenth of the
    sampling passes (one pass's sampled reward is noisy), and the timing. Every optimizer step logs its loss; only a
    step that sampled logs the rewards (one in rl.updates_per_sample)."""
    steps = [h for h in log_history if "loss" in h and "step" in h]
    passes = [h for h in log_history if "reward" in h]
    tenth = max(len(passes) // 10, 1)

    def first_last(key: str) -> tuple[float | None, float | None]:
        values = [h[key] for h in passes if isinstance(h.get(key), (int, float))]
        return _mean(values[:tenth]), _mean(values[-tenth:])

    metrics = {"enabled": True, "steps": len(steps), "sampling_passes": len(passes), "questions": cfg.questions}
    for key, name in (
        ("reward", "reward"),
        ("rewards/answer/mean", "sampled_accuracy"),
        ("rewards/format/mean", "format_rate"),
        ("kl", "kl"),
        ("completions/mean_length", "completion_length"),
        ("completions/clipped_ratio", "hit_cap_rate"),
    ):
        first, last = first_last(key)
        metrics[f"{name}_first"], metrics[f"{name}_last"] = first, last
    ran = len(steps) - resumed_from_step
    metrics.update(
        seconds=seconds,
        seconds_per_step=seconds / ran if ran > 0 else None,
        # Of each optimizer step, the seconds spent sampling (clock_sampling; None where it could not clock): a pass's
        # sampling is shared by the rl.updates_per_sample steps that train on it.
        sampling_seconds_per_step=_sampling_per_step(passes, len(steps)),
        completions_per_step=cfg.questions_per_step * cfg.group_size,
        resumed_from_step=resumed_from_step,
    )
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return metrics


def train_rl(
    params: Params,
    train_examples: list[Example],
    base_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    checkpoint_root: Path,
    live_dir: Path | None,
    keep_checkpoints: bool = False,
) -> dict:
    """Continue the SFT adapter at adapter_dir with GRPO; save the result (with tokenizer) to out_dir. Resumes from
    the newest complete checkpoint of the same run. Returns metrics (rl_metrics)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    cfg = params.rl
    tokenizer = load_tokenizer(base_dir, padding_side="left")
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    rows = prompt_rows(tokenizer, rl_questions(cfg, train_examples), chat)
    stop_ids = stop_token_ids(tokenizer, saved_generation_config(base_dir))
    compute_dtype = resolve_dtype(params.quant.compute_dtype)
    model = policy_model(params, base_dir, adapter_dir, compute_dtype, stop_ids)

    run_dir = checkpoint_root / rl_fingerprint(params, rows, base_dir, adapter_dir)
    resume_from = last_checkpoint(run_dir)
    if resume_from:
        print(f"resuming RL from {resume_from}")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=Gsm8kRewards(tokenizer, stop_ids).functions(),
        args=grpo_arguments(cfg, run_dir),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=training_callbacks(live_dir, resume_from, RL_CURVES),
    )
    keep_float32(model)  # before train() builds the optimizer over these parameters
    first_work()
    if not clock_sampling(trainer):
        print("rl: this TRL version hides its sampling step; seconds per step are not split into sampling and update")
    use_progress_lines(trainer, "rl", ("reward", "rewards/answer/mean", "kl", "sampling_seconds"))
    seconds = timed_training(
        trainer,
        resume_from,
        f"out of GPU memory in the rl stage with rl.micro_batch_size={cfg.micro_batch_size} completions per pass "
        f"and rl.max_completion_length={cfg.max_completion_length}: lower rl.micro_batch_size (the step's "
        "completions are then accumulated over more passes)",
    )

    # Only the trained adapter: TRL's frozen "ref" copy of the SFT adapter is not part of the result.
    model.save_pretrained(str(out_dir), safe_serialization=True, selected_adapters=["default"])
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(str(out_dir))
    record_weight_digests(out_dir)
    # Named as the SFT adapter names it (a Hub base by id and revision, else the base stage's output).
    name_adapter_base(out_dir, *adapter_base_reference(base_dir))
    resumed_from_step = int(Path(resume_from).name.split("-")[1]) if resume_from else 0
    metrics = rl_metrics(trainer.state.log_history, cfg, seconds, resumed_from_step)
    # Settings, not numbers: the stage keeps them beside the adapter (training_run.json), out of the metrics.
    metrics["compute_dtype"] = str(compute_dtype).removeprefix("torch.")
    metrics["device"] = device().type
    close_run(run_dir, keep_checkpoints)
    return metrics
