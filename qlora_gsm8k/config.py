"""params.yaml parsed once into typed, validated configs.

Every check lives here and in the section modules it puts together (train_config: the training recipe; eval_config:
the eval sets and the evaluation), so a typo fails in seconds, before any model or stage output is touched; checks
that read more than one section are Params'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .checks import check_non_negative, check_positive
from .errors import UserError
from .eval_config import EvalConfig, EvalSetConfig, default_eval_sets
from .local_paths import looks_like_path
from .train_config import RL_METHODS, LoraConfig, PeftMethodConfig, QuantConfig, RLConfig, TrainConfig, optimizer_steps

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


@dataclass(frozen=True)
class PromptConfig:
    # A system message opening every conversation, in training and evaluation alike; null: none, so the chat
    # template renders its own default (SmolLM2's names the assistant; TinyLlama's renders nothing).
    system: str | None = None


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


def model_kind(name: str) -> str:
    """'tiny' (built in code), 'gguf' (a local .gguf file), 'local' (a directory) or 'hub' (a Hub id)."""
    if name == TINY_LLAMA:
        return "tiny"
    if name.lower().endswith(".gguf"):
        return "gguf"
    return "local" if looks_like_path(name) else "hub"
