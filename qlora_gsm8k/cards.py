"""Model cards for what users take away (models/adapter, models/merged): where the weights came from, how they
were trained, what was measured, and how to load them. They replace peft's blank template card."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Params
from .io import atomic_write_text, read_json


def adapter_base_reference(base_dir: Path) -> tuple[str, str | None]:
    """What the adapter names as its base: a Hub base by id and pinned revision, so the adapter loads anywhere
    (AutoPeftModelForCausalLM passes the revision on); any other base (a local directory, a dequantized GGUF,
    tiny-llama) only exists as the base stage's output, named as the stage passed it (relative: from the repo root)."""
    try:
        provenance = read_json(base_dir / "provenance.json")
    except (OSError, ValueError):
        provenance = {}
    if provenance.get("kind") == "hub" and provenance.get("revision"):
        return provenance["name"], provenance["revision"]
    return str(base_dir), None


def name_adapter_base(adapter_dir: Path, name: str, revision: str | None = None) -> None:
    """Rewrite a saved adapter's adapter_config.json to name its base (what AutoPeftModelForCausalLM loads)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    config = read_json(config_path)
    config["base_model_name_or_path"], config["revision"] = name, revision
    # peft keeps target_modules as a set: its saved order follows the process's hash seed, so two identical
    # runs would write different adapter_config.json files (and DVC would see different adapters).
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _base_line(base_dir: Path) -> str:
    try:
        provenance = read_json(base_dir / "provenance.json")
    except (OSError, ValueError):
        return f"`{base_dir}`"
    name, revision = provenance.get("name"), provenance.get("revision")
    if revision:
        return f"`{name}` at revision `{revision}` (Hugging Face Hub)"
    digests = provenance.get("sha256") or {}
    pinned = ", ".join(f"`{f}` sha256 `{h[:12]}…`" for f, h in sorted(digests.items())[:3])
    return f"`{name}` ({provenance.get('kind')}{': ' + pinned if pinned else ''})"


_METHOD_NAMES = {
    "lora": "LoRA",
    "dora": "DoRA (weight-decomposed LoRA)",
    "rslora": "rsLoRA (LoRA scaled by alpha/sqrt(r))",
    "ia3": "IA3 (learned activation scaling)",
    "prompt": "prompt tuning",
    "prefix": "prefix tuning",
}


def _method_line(params: Params) -> str:
    lora, peft = params.lora, params.peft
    if peft.method == "ia3":
        return f"- {_METHOD_NAMES['ia3']} on {', '.join(peft.ia3_target_modules)}"
    if peft.method in ("prompt", "prefix"):
        return f"- {_METHOD_NAMES[peft.method]}: {peft.num_virtual_tokens} virtual tokens"
    rslora = lora.use_rslora or peft.method == "rslora"
    return (
        f"- {_METHOD_NAMES[peft.method]}: r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, rsLoRA "
        f"{'on' if rslora else 'off'}, on {', '.join(lora.target_modules)}"
    )


def _recipe(params: Params) -> list[str]:
    quant, train, data = params.quant, params.train, params.data
    return [
        f"- Base, frozen in 4-bit: bitsandbytes {quant.quant_type.upper()}, double quantization "
        f"{'on' if quant.double_quant else 'off'}, compute dtype {quant.compute_dtype}",
        _method_line(params),
        f"- Data: GSM8K `{data.source}` (config `{data.config}`, revision `{data.revision}`), train rows "
        f"{data.train_offset}–{data.train_offset + data.train_size - 1}"
        + (f" after a shuffle with seed {data.shuffle_seed}" if data.shuffle_seed else " in published order")
        + "; loss on the answer tokens only, each row in the model's chat template",
        "- Prompt: the model's chat template, "
        + (f"system message {params.prompt.system!r}" if params.prompt.system else "no system message of ours")
        + "; the same for training and evaluation",
        f"- Training: lr {train.learning_rate} ({train.lr_scheduler}, warmup {train.warmup_ratio}), {train.epochs} "
        f"epoch(s), micro-batch {train.micro_batch_size} × {train.grad_accum} accumulation, max length "
        f"{train.max_length}, seed {train.seed}",
    ]


def _numbers(title: str, metrics: dict, keys: list[str]) -> list[str]:
    # No timings: the same params and seed must give byte-identical model directories (tests/test_determinism.py).
    shown = [f"| {k} | {metrics[k]:.6g} |" for k in keys if isinstance(metrics.get(k), (int, float))]
    return [f"## {title}", "", "| metric | value |", "|---|---|", *shown, ""] if shown else []


def _load_lines(shown_as: str, base_dir: Path) -> list[str]:
    name, revision = adapter_base_reference(base_dir)
    where = (
        f"The adapter names its base by Hub id and revision (`{name}` @ `{revision[:12]}…`): it loads from any "
        "directory (offline once the base is in the Hugging Face cache)."
        if revision
        else f"The adapter names its base as `{name}`, the base stage's output: load it from the repository root, "
        f"or from elsewhere pass the base yourself: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
        f'"<repo>/{name}"), "<repo>/{shown_as}")`.'
    )
    return [
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{shown_as}")',
        "```",
        "",
        where,
        "",
    ]


def write_adapter_card(adapter_dir: Path, shown_as: str, base_dir: Path, params: Params, train_metrics: dict) -> None:
    """Write adapter_dir/README.md; `shown_as` is the path users load the adapter from (the stage's output path)."""
    lines = [
        "# QLoRA adapter: GSM8K",
        "",
        f"A LoRA adapter trained on a 4-bit base by the qlora-gsm8k DVC pipeline. Base model: {_base_line(base_dir)}.",
        "",
        *_recipe(params),
        "",
        *_numbers("Training", train_metrics, ["train_loss", "final_loss", "steps", "examples", "real_tokens"]),
        "## Load",
        "",
        *_load_lines(shown_as, base_dir),
        "Evaluation against the base (perplexity, GSM8K exact match, paired flips): `metrics/*.json` of the run.",
        "",
    ]
    atomic_write_text(adapter_dir / "README.md", "\n".join(lines))


def write_merged_card(
    merged_dir: Path, shown_as: str, base_dir: Path, params: Params, merge_metrics: dict, dtype: str
) -> None:
    what = (
        f"A standalone {dtype} model: the qlora-gsm8k adapter merged into its base, {_base_line(base_dir)}, "
        f"merged into the base's {params.eval.merge_into} weights."
        if merge_metrics.get("merged", 1)
        else f"Not merged: peft.method={params.peft.method} learns virtual tokens, not weight changes, so this is the "
        f"adapter with the {dtype} weights of its base, {_base_line(base_dir)} ({params.eval.merge_into} weights), in "
        "one directory; the adapter is in `adapter/`, whose `adapter_config.json` names this directory as its base."
    )
    load = (
        [f'model = AutoModelForCausalLM.from_pretrained("{shown_as}")']
        if merge_metrics.get("merged", 1)
        else [
            "from peft import AutoPeftModelForCausalLM",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{shown_as}/adapter")  # from the repository root',
        ]
    )
    lines = [
        "# GSM8K QLoRA fine-tune, merged",
        "",
        what,
        "",
        *_recipe(params),
        "",
        *_numbers(
            "Merge check: the merged model against the 4-bit model as trained",
            merge_metrics,
            ["top1_agreement_merged_vs_4bit_adapter", "kl_merged_vs_4bit_adapter", "kl_tokens", "check_examples"],
        ),
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        *load,
        f'tokenizer = AutoTokenizer.from_pretrained("{shown_as}")',
        "```",
        "",
        "Prompt it through its chat template (`tokenizer.apply_chat_template(..., add_generation_prompt=True)`), as "
        "it was trained and evaluated.",
        "",
    ]
    atomic_write_text(merged_dir / "README.md", "\n".join(lines))
