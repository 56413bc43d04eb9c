"""params.yaml parsed once into typed, validated configs.

Every check lives here so a typo fails in seconds, before any model or stage output is touched.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Literal

from .checks import check_non_negative, check_positive
from .errors import UserError
from .local_paths import looks_like_path

TINY_LLAMA = "tiny-llama"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    revision: str = "fe8a4ea1ffedaf415f4da2f062534de366a451e6"


@dataclass(frozen=True)
class DataConfig:
    source: str = "openai/gsm8k"
    config: str = "main"
    revision: str = "740312add88f781978c0658806c59bc2815b9866"
    train_size: int = 200
    train_offset: int = 0
    # 0 keeps the published order; any other value shuffles the train split with that seed before slicing.
    shuffle_seed: int = 0
    # Share of each eval set's questions allowed to appear in the train slice too (a contaminated eval measures
    # recall): checked for every eval set, whatever its source.
    max_eval_overlap: float = 0.0

    def validate(self) -> None:
        if not 0.0 <= self.max_eval_overlap <= 1.0:
            raise UserError(f"data.max_eval_overlap must be in [0, 1], got {self.max_eval_overlap}")
        check_positive("data.train_size", self.train_size)
        check_non_negative("data.train_offset", self.train_offset)
        check_non_negative("data.shuffle_seed", self.shuffle_seed)


# Layouts an eval set's source can be in, and whether its rows carry worked solutions (what perplexity and the merge
# check score): gsm8k, JSON lines as openai/grade-school-math ("question", "answer" ending "#### N"); svamp, the
# published SVAMP.json / ChilleD/SVAMP ("Body", "Question", "Answer", "Type"); plain, JSON lines with "question" and
# a numeric "answer" (and an optional "type", broken down in the report like SVAMP's).
LAYOUTS_WITH_SOLUTIONS = {"gsm8k": True, "svamp": False, "plain": False}
# A set's name becomes file and DVC stage names (evaluate_base@<set>, metrics/eval/<set>_base.json): no '-', '/', '@'.
_SET_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


@dataclass(frozen=True)
class EvalSetConfig:
    """One evaluation set (an entry of `eval_sets`): where its rows come from, in which layout, and which of them."""

    # false: its stages write empty outputs without reading the source or loading a model; compare skips it.
    enabled: bool = True
    layout: Literal["gsm8k", "svamp", "plain"] = "plain"
    # A Hub dataset id (at `revision`, with `config`), a local file (all its rows; `split` does not apply) or a
    # local directory holding <split>.jsonl (<split>.json for svamp); null: the training source (data.source,
    # data.config, data.revision), whose overlap with the train slice is then the live question.
    source: str | None = None
    config: str | None = None
    revision: str | None = None
    split: str = "test"
    size: int = 100
    offset: int = 0
    # 0 keeps the source's order; any other value shuffles the split with that seed before slicing.
    shuffle_seed: int = 0

    @property
    def has_solutions(self) -> bool:
        return LAYOUTS_WITH_SOLUTIONS[self.layout]

    def validate(self, name: str) -> None:
        if not _SET_NAME.fullmatch(name):
            raise UserError(
                f"eval_sets.{name}: a set's name may hold only letters, digits and '_' (it names files and DVC "
                "stages), e.g. my_set"
            )
        check_positive(f"eval_sets.{name}.size", self.size)
        check_non_negative(f"eval_sets.{name}.offset", self.offset)
        check_non_negative(f"eval_sets.{name}.shuffle_seed", self.shuffle_seed)


def default_eval_sets() -> dict[str, EvalSetConfig]:
    """GSM8K's held-out test slice (from the training source) and SVAMP, as params.yaml ships them."""
    return {
        "gsm8k": EvalSetConfig(layout="gsm8k"),
        "svamp": EvalSetConfig(
            layout="svamp", source="ChilleD/SVAMP", revision="5e0bf1e5e7c0e9c4bc39180d224f41f3f801b7ef"
        ),
    }


@dataclass(frozen=True)
class PromptConfig:
    # A system message opening every conversation, in training and evaluation alike; null: none, so the chat
    # template renders its own default (SmolLM2's names the assistant; TinyLlama's renders nothing).
    system: str | None = None


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


@dataclass(frozen=True)
class EvalConfig:
    # Rows per forward pass when scoring (perplexity, merge check): memory grows with rows x length x vocab.
    batch_size: int = 32
    # Questions generated together: memory is the KV cache (small), and each decoding step costs about the
    # same for 1 row as for hundreds, so large batches are what make generation fast.
    generation_batch_size: int = 256
    max_new_tokens: int = 256
    # Precision both base and tuned are evaluated in; auto = bfloat16 on GPU, float32 on CPU.
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Which weights the adapter is merged into (qlora_gsm8k.merging): the dequantized NF4 weights it was trained
    # against, or the original 16-bit ones.
    merge_into: Literal["dequantized", "original"] = "dequantized"
    # Precision the merged weights are saved in; auto = float16 where eval.dtype is 16-bit (a GPU), float32 where
    # it is float32 (a CPU). float16 keeps 3 more mantissa bits than bfloat16 at the same size: on SmolLM2 the
    # saved weights agreed with the trained model on 99.7-99.8% of next tokens, against 98.2-98.5% in bfloat16
    # (bench/MERGE.md); float32 is exact and twice the size.
    merged_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Merge check: the merge stage fails when the merged model does not behave like the 4-bit model it came
    # from, compared in float32 (qlora_gsm8k.merging): KL, and top-1 agreement where the 4-bit model's choice is
    # clear. SmolLM2-135M-Instruct: a dequantized merge saved in float16 gave KL 1.2e-5-1.6e-5, top-1 1.000 there
    # (H100); a merge into the original weights 0.125 / 0.868 over all tokens.
    merge_kl_threshold: float = 0.05
    merge_min_top1_agreement: float = 0.97
    merge_check_size: int = 16
    # The eval set whose worked solutions the merge check scores (an enabled entry of eval_sets in a layout with
    # solutions: gsm8k).
    merge_check_set: str = "gsm8k"
    report_samples: int = 10

    def validate(self) -> None:
        check_positive("eval.batch_size", self.batch_size)
        check_positive("eval.generation_batch_size", self.generation_batch_size)
        check_positive("eval.max_new_tokens", self.max_new_tokens)
        if not self.merge_kl_threshold > 0:
            raise UserError(f"eval.merge_kl_threshold must be > 0, got {self.merge_kl_threshold}")
        if not 0.0 <= self.merge_min_top1_agreement <= 1.0:
            raise UserError(f"eval.merge_min_top1_agreement must be in [0, 1], got {self.merge_min_top1_agreement}")
        check_positive("eval.merge_check_size", self.merge_check_size)
        check_non_negative("eval.report_samples", self.report_samples)


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
        for key in ("questions", "steps", "group_size", "questions_per_step", "micro_batch_size"):
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


@dataclass(frozen=True)
class Params:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    peft: PeftMethodConfig = field(default_factory=PeftMethodConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=default_eval_sets)
    rl: RLConfig = field(default_factory=RLConfig)

    def enabled_sets(self) -> dict[str, EvalSetConfig]:
        return {name: cfg for name, cfg in self.eval_sets.items() if cfg.enabled}

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            validate = getattr(getattr(self, section.name), "validate", None)
            if validate:
                validate()
        for name, eval_set in self.eval_sets.items():
            eval_set.validate(name)
        self._validate_merge_check_set()
        self._validate_rl()
        steps, warmup = optimizer_steps(self.data.train_size, self.train)
        if steps <= warmup:
            # The HF Trainer's first step runs at learning rate 0 during warmup: LoRA's B would stay all zero and
            # the "tuned" model would be the base exactly.
            raise UserError(
                f"training would take {steps} optimizer step(s), all of them warmup (train.warmup_ratio="
                f"{self.train.warmup_ratio}): the adapter would not learn. Raise data.train_size "
                f"({self.data.train_size}) or train.epochs ({self.train.epochs}), lower train.micro_batch_size or "
                "train.grad_accum, or set train.warmup_ratio=0"
            )

    def _validate_rl(self) -> None:
        rl = self.rl
        if rl.enabled and self.peft.method not in RL_METHODS:
            raise UserError(
                f"rl.enabled continues the SFT adapter under GRPO, which here takes the LoRA family only (peft.method "
                f"{', '.join(RL_METHODS)}); peft.method={self.peft.method} is not one of them"
            )
        if rl.enabled and rl.offset + rl.questions > self.data.train_size:
            raise UserError(
                f"rl.questions={rl.questions} from rl.offset={rl.offset} need {rl.offset + rl.questions} train rows; "
                f"data.train_size={self.data.train_size}: lower rl.questions or raise data.train_size (RL samples "
                "the train slice, which no eval set overlaps)"
            )

    def _validate_merge_check_set(self) -> None:
        name = self.eval.merge_check_set
        chosen = self.eval_sets.get(name)
        if chosen is None or not chosen.enabled or not chosen.has_solutions:
            fits = [n for n, s in self.enabled_sets().items() if s.has_solutions]
            why = (
                "no such set" if chosen is None else "it is off" if not chosen.enabled else "its rows have no solutions"
            )
            raise UserError(
                f"eval.merge_check_set={name!r}: {why}; the merge check scores worked solutions, so it needs an "
                f"enabled eval set in the gsm8k layout ({', '.join(fits) or 'none in eval_sets'})"
            )


def optimizer_steps(train_rows: int, cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps, warmup steps) as the HF Trainer counts them for `train_rows` rows."""
    batches = math.ceil(train_rows / (cfg.micro_batch_size * cfg.num_gpus))
    per_epoch = max(math.ceil(batches / cfg.grad_accum), 1)
    steps = math.ceil(cfg.epochs * per_epoch)
    return steps, math.ceil(steps * cfg.warmup_ratio)


def model_kind(name: str) -> str:
    """'tiny' (built in code), 'gguf' (a local .gguf file), 'local' (a directory) or 'hub' (a Hub id)."""
    if name == TINY_LLAMA:
        return "tiny"
    if name.lower().endswith(".gguf"):
        return "gguf"
    return "local" if looks_like_path(name) else "hub"
