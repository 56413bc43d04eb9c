"""The adapter method params: the `peft` section (which method, and the IA3 / virtual-token keys) and the `lora`
section (LoRA, DoRA, rsLoRA), with the rule that a changed key the chosen method does not read is refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .checks import check_positive
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


LORA_METHODS = ("lora", "dora", "rslora")
VIRTUAL_TOKEN_METHODS = ("prompt", "prefix")


@dataclass(frozen=True)
class PeftMethodConfig:
    """Which parameter-efficient method trains on the frozen 4-bit base, each with its own keys.

    lora: the `lora` section; dora: LoRA with weight decomposition (peft's use_dora); rslora: LoRA scaled by
    alpha/sqrt(r) (lora.use_rslora implied); ia3: learned scaling of the activations of ia3_target_modules
    (ia3_feedforward_modules scale their input); prompt / prefix: prompt tuning / prefix tuning, num_virtual_tokens
    learned tokens (embeddings, or keys and values at every layer). prompt and prefix cannot be merged into the
    weights: the merge stage saves them as an adapter on the base, and says so (merge.merged = 0)."""

    method: Literal["lora", "dora", "rslora", "ia3", "prompt", "prefix"] = "lora"
    ia3_target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    ia3_feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])
    num_virtual_tokens: int = 20

    def validate(self) -> None:
        check_positive("peft.num_virtual_tokens", self.num_virtual_tokens)
        if self.method != "ia3":
            return  # the ia3 keys are not read (a changed one is refused by check_method_keys)
        if not self.ia3_target_modules:
            raise UserError("peft.ia3_target_modules must name at least one module, e.g. [k_proj, v_proj, down_proj]")
        stray = [m for m in self.ia3_feedforward_modules if m not in self.ia3_target_modules]
        if stray:
            raise UserError(f"peft.ia3_feedforward_modules {stray} must also be in peft.ia3_target_modules")

    def adapted_modules(self, lora: LoraConfig) -> list[str]:
        """The modules the method wraps (none for prompt and prefix tuning, which add tokens)."""
        if self.method in LORA_METHODS:
            return list(lora.target_modules)
        return list(self.ia3_target_modules) if self.method == "ia3" else []


def check_method_keys(peft: PeftMethodConfig, lora: LoraConfig) -> None:
    """A key changed from its default that the chosen method does not read is an error, naming both."""
    defaults = PeftMethodConfig()
    applies = {
        "peft.ia3_target_modules": (peft.ia3_target_modules != defaults.ia3_target_modules, ("ia3",)),
        "peft.ia3_feedforward_modules": (peft.ia3_feedforward_modules != defaults.ia3_feedforward_modules, ("ia3",)),
        "peft.num_virtual_tokens": (peft.num_virtual_tokens != defaults.num_virtual_tokens, VIRTUAL_TOKEN_METHODS),
        "lora.use_rslora": (lora.use_rslora, LORA_METHODS),
    }
    for key, (changed, methods) in applies.items():
        if changed and peft.method not in methods:
            raise UserError(
                f"{key} does not apply to peft.method={peft.method} (only to {', '.join(methods)}); "
                f"reset it, or pick one of those methods"
            )
