"""The PEFT method table: every value of peft.method, with the peft config it builds, how cards name it, whether it
merges into the weights, and the param keys it reads. Only the stages that train, merge, describe or check an adapter
import it (the params' values live in config.py), so adding or changing a method never re-runs fetch, base or the
base's evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Params
from .errors import UserError
from .train_config import LoraConfig, PeftMethodConfig


def lora_config(lora: LoraConfig, use_dora: bool = False, use_rslora: bool | None = None):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        use_rslora=lora.use_rslora if use_rslora is None else use_rslora,
        use_dora=use_dora,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _ia3_config(params: Params):
    from peft import IA3Config

    return IA3Config(
        target_modules=list(params.peft.ia3_target_modules),
        feedforward_modules=list(params.peft.ia3_feedforward_modules),
        task_type="CAUSAL_LM",
    )


def _prompt_tuning_config(params: Params):
    from peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=params.peft.num_virtual_tokens, task_type="CAUSAL_LM")


def _prefix_tuning_config(params: Params):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=params.peft.num_virtual_tokens, task_type="CAUSAL_LM")


def _check_ia3(params: Params) -> None:
    peft = params.peft
    if not peft.ia3_target_modules:
        raise UserError("peft.ia3_target_modules must name at least one module, e.g. [k_proj, v_proj, down_proj]")
    stray = [m for m in peft.ia3_feedforward_modules if m not in peft.ia3_target_modules]
    if stray:
        raise UserError(f"peft.ia3_feedforward_modules {stray} must also be in peft.ia3_target_modules")


@dataclass(frozen=True)
class PeftMethod:
    label: str  # as model cards name it
    build: Callable[[Params], Any]  # the peft config; QLoRA is this plus the 4-bit quantization config
    # Weight deltas merge_and_unload adds to the base. Prompt and prefix tuning learn tokens: the merge stage keeps
    # them as an adapter on the weights a merge would use.
    mergeable: bool
    reads: tuple[str, ...]  # param keys besides peft.method
    check: Callable[[Params], None] | None = None  # what its keys must satisfy together

    def adapted_modules(self, params: Params) -> list[str]:
        """The modules the method wraps (none for prompt and prefix tuning, which add tokens)."""
        if "lora.target_modules" in self.reads:
            return list(params.lora.target_modules)
        return list(params.peft.ia3_target_modules) if "peft.ia3_target_modules" in self.reads else []


_LORA_KEYS = ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.use_rslora")
_VIRTUAL_TOKEN_KEYS = ("peft.num_virtual_tokens",)

METHODS: dict[str, PeftMethod] = {
    "lora": PeftMethod("LoRA", lambda p: lora_config(p.lora), True, _LORA_KEYS),
    "dora": PeftMethod("DoRA (weight-decomposed LoRA)", lambda p: lora_config(p.lora, use_dora=True), True, _LORA_KEYS),
    "rslora": PeftMethod(
        "rsLoRA (LoRA scaled by alpha/sqrt(r))", lambda p: lora_config(p.lora, use_rslora=True), True, _LORA_KEYS
    ),
    "ia3": PeftMethod(
        "IA3 (learned activation scaling)",
        _ia3_config,
        True,
        ("peft.ia3_target_modules", "peft.ia3_feedforward_modules"),
        _check_ia3,
    ),
    "prompt": PeftMethod("prompt tuning", _prompt_tuning_config, False, _VIRTUAL_TOKEN_KEYS),
    "prefix": PeftMethod("prefix tuning", _prefix_tuning_config, False, _VIRTUAL_TOKEN_KEYS),
}

# Refused when changed from the default under a method that does not read them: the peft section's own keys, and
# lora.use_rslora (switching rsLoRA on is a choice of method). The lora section's shape (r, alpha, dropout,
# target_modules) is left as it is, so a method sweep can follow a `-S lora.r=8` experiment.
_REFUSED_UNREAD = [f"peft.{f.name}" for f in dataclasses.fields(PeftMethodConfig) if f.name != "method"]
_REFUSED_UNREAD.append("lora.use_rslora")


def method_of(params: Params) -> PeftMethod:
    try:
        return METHODS[params.peft.method]
    except KeyError:
        raise UserError(
            f"peft.method must be one of {', '.join(map(repr, METHODS))}, got {params.peft.method!r}"
        ) from None


def adapter_config(params: Params):
    """The peft config of params.peft.method."""
    return method_of(params).build(params)


def _changed(params: Params, key: str) -> bool:
    section, name = key.split(".")
    default = next(f for f in dataclasses.fields(type(getattr(params, section))) if f.name == name)
    value = default.default_factory() if default.default is dataclasses.MISSING else default.default
    return getattr(getattr(params, section), name) != value


def check_method(params: Params) -> None:
    """peft.method names a method of the table, its keys hold together, and a key changed from its default that the
    method does not read is an error naming both (a stage that reads params.peft runs this on its params)."""
    method = method_of(params)
    if method.check:
        method.check(params)
    for key in _REFUSED_UNREAD:
        if key not in method.reads and _changed(params, key):
            readers = [name for name, other in METHODS.items() if key in other.reads]
            raise UserError(
                f"{key} does not apply to peft.method={params.peft.method} (only to {', '.join(readers)}); "
                f"reset it, or pick one of those methods"
            )
