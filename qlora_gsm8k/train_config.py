"""The training recipe's sections of params.yaml: the PEFT method and LoRA, the 4-bit quantization, SFT and the
optional GRPO run after it, each validated on its own (qlora_gsm8k.config puts the sections together)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .checks import check_non_negative, check_positive
from .errors import UserError


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r, so large ranks keep learning.
    use_rslora: bool = False

    def validate(self) -> None:
        check_positive("lora.r", self.r)
        check_positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise UserError("lora.target_modules must name at least one module, e.g. [q_proj, v_proj]")


@dataclass(frozen=True)
class PeftMethodConfig:
    """Which parameter-efficient method trains on the frozen 4-bit base, and the keys of the non-LoRA methods.

    lora: the `lora` section; dora: LoRA with weight decomposition (peft's use_dora); rslora: LoRA scaled by
    alpha/sqrt(r) (lora.use_rslora implied); ia3: learned scaling of the activations of ia3_target_modules
    (ia3_feedforward_modules scale their input); prompt / prefix: prompt tuning / prefix tuning, num_virtual_tokens
    learned tokens (embeddings, or keys and values at every layer). prompt and prefix cannot be merged into the
    weights: the merge stage saves them as an adapter on the base, and says so (merge.merged = 0).
    The methods themselves, and which keys each reads, are peft_methods.METHODS (checked by check_method there, in
    the stages that use them): only the values live here, so a new method re-runs no stage that ignores methods."""

    method: str = "lora"
    ia3_target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    ia3_feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])
    num_virtual_tokens: int = 20

    def validate(self) -> None:
        check_positive("peft.num_virtual_tokens", self.num_virtual_tokens)


@dataclass(frozen=True)
class QuantConfig:
    quant_type: Literal["nf4", "fp4"] = "nf4"
    # Quantizing the quantization constants saves ~0.4 bit per weight (~45 MB on a 1.1B model) and costs a
    # kernel per layer call: 15.3k vs 13.2k tokens/s on an H200 (bench/results/run2).
    double_quant: bool = False
    # auto: bfloat16 on a GPU that supports it, else float32 (fp16 compute with 4-bit can give NaN losses).
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 2e-4
    epochs: float = 1.0
    micro_batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 42
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    # Gradients clipped to this global norm (the HF Trainer's default); 0 turns clipping off, and with it the
    # per-step norm over every trainable gradient (bench/bench.py measures what that costs).
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    gradient_checkpointing: bool = False
    # Sort micro-batches by length so padding is small; the effective batch is unchanged.
    group_by_length: bool = True
    logging_steps: int = 1
    save_steps: int = 50
    # > 1: one DDP process per GPU (accelerate launch); micro_batch_size is per GPU, so the effective batch
    # is micro_batch_size * grad_accum * num_gpus.
    num_gpus: int = 1
    # Liger's fused Triton kernels (RMSNorm, SwiGLU, linear + cross-entropy without the logits tensor; its
    # RoPE is left out, see accelerators.LIGER_KERNELS). auto: on when a CUDA GPU is used and liger-kernel is
    # installed; true: required.
    liger_kernel: bool | Literal["auto"] = "auto"
    # torch.compile each decoder layer (CUDA only): fuses the many small kernels whose CPU launch cost bounds
    # a QLoRA step on a large GPU; costs compile time once per run (see bench/RESULTS.md).
    compile: bool = False
    # Each training step's forward, loss and backward recorded once per batch shape as a CUDA graph and replayed
    # (qlora_gsm8k/step_graphs.py): batches padded to multiples of 128 tokens, the LM head and loss chunked.
    # auto: on runs of >= 200 micro-batches where it can run (one CUDA GPU, bf16/fp32, LoRA-family methods), else
    # one line says why not; true: required, whatever the run's length.
    cuda_graphs: bool | Literal["auto"] = "auto"

    def validate(self) -> None:
        if not self.learning_rate > 0:
            raise UserError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if not self.epochs > 0:
            raise UserError(f"train.epochs must be > 0, got {self.epochs}")
        check_positive("train.micro_batch_size", self.micro_batch_size)
        check_positive("train.grad_accum", self.grad_accum)
        if self.max_length < 16:
            raise UserError(f"train.max_length must be >= 16, got {self.max_length}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check_non_negative("train.weight_decay", self.weight_decay)
        check_non_negative("train.max_grad_norm", self.max_grad_norm)
        check_positive("train.logging_steps", self.logging_steps)
        check_positive("train.save_steps", self.save_steps)
        check_positive("train.num_gpus", self.num_gpus)

    def report_dropped_rows(self, lengths: list[int]) -> int:
        """Rows longer than train.max_length are left out, never cut (a cut answer teaches the model not to stop):
        says how many; refuses when more than half would be. Returns how many."""
        dropped = sum(n > self.max_length for n in lengths)
        if dropped:
            print(
                f"{dropped} of {len(lengths)} training rows are longer than train.max_length={self.max_length} tokens "
                "and are left out (rows are never truncated: a cut answer teaches the model not to stop)"
            )
        if dropped > len(lengths) / 2:
            fits_all = -(-max(lengths) // 64) * 64
            raise UserError(
                f"{dropped} of {len(lengths)} training rows are longer than train.max_length={self.max_length} tokens "
                f"(the longest has {max(lengths)}); raise it, e.g. -S train.max_length={fits_all}"
            )
        return dropped


# The methods whose adapter the rl stage continues (TRL copies it as the frozen "ref" adapter); run on LoRA (tests).
RL_METHODS = ("lora", "rslora", "dora")


@dataclass(frozen=True)
class RLConfig:
    """GRPO after SFT (the rl stage, TRL's GRPOTrainer): the SFT adapter trained on, on the 4-bit base, with the GSM8K
    answer as reward (qlora_gsm8k.rewards). Off by default: the rl stage then writes a marker and loads nothing, and
    merge takes the SFT adapter."""

    enabled: bool = False
    # Questions from the train slice (data/train.jsonl, so never in an eval slice), from `offset` on.
    questions: int = 128
    offset: int = 0
    steps: int = 50
    # Completions sampled per question (GRPO's group; the advantage is a completion's reward against its group's).
    group_size: int = 8
    questions_per_step: int = 8
    # Completions per forward/backward pass; the step's questions_per_step x group_size are accumulated over passes.
    micro_batch_size: int = 32
    # Optimizer steps on each sampling pass's completions (GRPO's mu, TRL's num_iterations): above 1, the sampling is
    # paid once per that many steps, and the policy ratio is clipped against the policy that sampled.
    updates_per_sample: int = 1
    learning_rate: float = 1e-5
    # KL penalty towards the SFT adapter (TRL keeps a frozen copy of it as the reference); 0: no reference pass.
    kl_beta: float = 0.04
    max_completion_length: int = 256
    temperature: float = 1.0
    # Added to the answer reward (1 for a correct '#### N' answer) when the completion ends with its '#### N' line
    # and stops there (the end-of-turn token): the format evaluation's strict match reads, and stopping.
    format_reward: float = 0.1
    seed: int = 42
    save_steps: int = 25

    def validate(self) -> None:
        for key in ("questions", "steps", "group_size", "questions_per_step", "micro_batch_size", "updates_per_sample"):
            check_positive(f"rl.{key}", getattr(self, key))
        check_non_negative("rl.offset", self.offset)
        check_non_negative("rl.kl_beta", self.kl_beta)
        check_non_negative("rl.format_reward", self.format_reward)
        check_positive("rl.save_steps", self.save_steps)
        if self.group_size < 2:
            raise UserError(
                f"rl.group_size must be >= 2 (GRPO compares completions within a group), got {self.group_size}"
            )
        if not self.learning_rate > 0:
            raise UserError(f"rl.learning_rate must be > 0, got {self.learning_rate}")
        if not self.temperature > 0:
            raise UserError(f"rl.temperature must be > 0 (GRPO samples), got {self.temperature}")
        if self.max_completion_length < 8:
            raise UserError(f"rl.max_completion_length must be >= 8, got {self.max_completion_length}")
        completions = self.questions_per_step * self.group_size
        if completions % self.micro_batch_size:
            raise UserError(
                f"rl.questions_per_step x rl.group_size = {completions} completions a step must be a multiple of "
                f"rl.micro_batch_size={self.micro_batch_size}"
            )
        if self.micro_batch_size % self.group_size and self.group_size % self.micro_batch_size:
            raise UserError(
                f"rl.micro_batch_size={self.micro_batch_size} and rl.group_size={self.group_size}: one must divide "
                "the other (TRL splits a step's completions into passes by group)"
            )


def optimizer_steps(train_rows: int, cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps, warmup steps) as the HF Trainer counts them for `train_rows` rows."""
    batches = math.ceil(train_rows / (cfg.micro_batch_size * cfg.num_gpus))
    per_epoch = max(math.ceil(batches / cfg.grad_accum), 1)
    steps = math.ceil(cfg.epochs * per_epoch)
    return steps, math.ceil(steps * cfg.warmup_ratio)
