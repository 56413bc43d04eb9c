"""Model cards for what users take away (models/adapter, models/merged): where the weights came from, how they
were trained, what was measured, and how to load them. They replace peft's blank template card."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Params
from .io import atomic_write_text, read_json
from .peft_methods import method_of


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


def _method_line(params: Params) -> str:
    lora, peft = params.lora, params.peft
    method = method_of(params)
    if "peft.ia3_target_modules" in method.reads:
        return f"- {method.label} on {', '.join(peft.ia3_target_modules)}"
    if "peft.num_virtual_tokens" in method.reads:
        return f"- {method.label}: {peft.num_virtual_tokens} virtual tokens"
    rslora = lora.use_rslora or peft.method == "rslora"
    return (
        f"- {method.label}: r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, rsLoRA "
        f"{'on' if rslora else 'off'}, on {', '.join(lora.target_modules)}"
    )


def _compute_dtype(params: Params, used: str | None) -> str:
    """The dtype training computed in; quant.compute_dtype may be 'auto', which says nothing to a reader."""
    asked = params.quant.compute_dtype
    if used is None or used == asked:
        return asked
    return f"{used} (quant.compute_dtype: {asked})"


def _recipe(params: Params, compute_dtype: str | None = None) -> list[str]:
    """`compute_dtype`: the dtype training resolved quant.compute_dtype to (training_run.json)."""
    quant, train, data = params.quant, params.train, params.data
    return [
        f"- Base, frozen in 4-bit: bitsandbytes {quant.quant_type.upper()}, double quantization "
        f"{'on' if quant.double_quant else 'off'}, compute dtype {_compute_dtype(params, compute_dtype)}",
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


def _rl_lines(rl: dict | None) -> list[str]:
    """`rl`: the rl params the rl stage ran with (RL_RECIPE beside its adapter), None where there was no RL."""
    if not rl:
        return []
    return [
        f"- Then GRPO (TRL's GRPOTrainer) on the SFT adapter: {rl['steps']} steps of {rl['questions_per_step']} train "
        f"questions × {rl['group_size']} sampled completions (temperature {rl['temperature']}, at most "
        f"{rl['max_completion_length']} tokens), from {rl['questions']} questions; reward: the strict '#### N' answer "
        f"(1) plus {rl['format_reward']} for stopping right after it; KL weight {rl['kl_beta']} towards the SFT "
        f"adapter; lr {rl['learning_rate']}, seed {rl['seed']}"
        + (
            f"; each sampling pass trained on for {rl['updates_per_sample']} steps"
            if rl.get("updates_per_sample", 1) > 1
            else ""
        )
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


# Cards are written before evaluation runs, and a stage never rewrites another's output: the compare stage writes
# the adapter's card with the evaluation added as its own output instead.
EVALUATED_CARD = "reports/model_card.md"
# Written by the rl stage beside its adapter: the rl params it ran with, which the merged model's card states.
RL_RECIPE = "rl_recipe.json"
EVALUATION_POINTER = (
    f"Evaluation against the base (exact match on every eval set, perplexity, paired flips) runs after this card is "
    f"written: the compare stage writes this card with the results added to `{EVALUATED_CARD}`; the numbers alone are "
    "in `metrics/*.json`."
)


def write_adapter_card(adapter_dir: Path, shown_as: str, base_dir: Path, params: Params, train_metrics: dict) -> None:
    """Write adapter_dir/README.md; `shown_as` is the path users load the adapter from (the stage's output path).
    `train_metrics` holds train_adapter's metrics, including the compute dtype it resolved."""
    lines = [
        "# QLoRA adapter: GSM8K",
        "",
        f"A LoRA adapter trained on a 4-bit base by the qlora-gsm8k DVC pipeline. Base model: {_base_line(base_dir)}.",
        "",
        *_recipe(params, train_metrics.get("compute_dtype")),
        "",
        *_numbers("Training", train_metrics, ["train_loss", "final_loss", "steps", "examples", "real_tokens"]),
        "## Load",
        "",
        *_load_lines(shown_as, base_dir),
        EVALUATION_POINTER,
        "",
    ]
    atomic_write_text(adapter_dir / "README.md", "\n".join(lines))


def write_rl_adapter_card(adapter_dir: Path, sft_card: str, rl_recipe: dict, rl_metrics: dict) -> None:
    """The RL adapter's README.md: the SFT adapter's card it continues, with the GRPO recipe and its numbers added."""
    lines = [
        sft_card.rstrip(),
        "",
        "## Then reinforcement learning (GRPO)",
        "",
        "This adapter is the one above continued with GRPO; it loads the same way, from its own directory.",
        "",
        *_rl_lines(rl_recipe),
        "",
        *_numbers(
            "GRPO (first and last tenth of the steps)",
            rl_metrics,
            ["steps", "reward_first", "reward_last", "sampled_accuracy_first", "sampled_accuracy_last", "kl_last"],
        ),
    ]
    atomic_write_text(adapter_dir / "README.md", "\n".join(lines))


def write_merged_card(
    merged_dir: Path,
    shown_as: str,
    base_dir: Path,
    params: Params,
    merge_metrics: dict,
    dtype: str,
    compute_dtype: str | None = None,
    rl_recipe: dict | None = None,
) -> None:
    """`dtype`: the merged weights'; `compute_dtype`: what training computed in (the adapter's training_run.json);
    `rl_recipe`: the rl params of an RL adapter (RL_RECIPE), None for an SFT adapter."""
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
        *_recipe(params, compute_dtype),
        *_rl_lines(rl_recipe),
        "",
        *_numbers(
            "Merge check: the merged model against the 4-bit model as trained",
            merge_metrics,
            [
                "top1_agreement_decided",
                "decided_tokens",
                "top1_agreement_merged_vs_4bit_adapter",
                "kl_merged_vs_4bit_adapter",
                "kl_tokens",
                "check_examples",
            ],
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
        EVALUATION_POINTER.replace("this card with", "the adapter's card with"),
        "",
    ]
    atomic_write_text(merged_dir / "README.md", "\n".join(lines))


def _rate(values) -> str:
    return f"{float(values.mean()):.3f}" if len(values) else "–"


def evaluation_lines(sets: dict, params: Params) -> list[str]:
    """The compare stage's numbers as a model card section: `sets` is name -> (comparison.generations_table's table,
    comparison.set_metrics' metrics, perplexity by model), every enabled set; base and tuned side by side, then each
    set's paired test."""
    cfg = params.eval
    rows, paired_lines = [], []
    for name, (table, metrics, perplexity) in sets.items():
        rows += [
            (f"{name} exact match, flexible-extract", _rate(table.base_correct), _rate(table.tuned_correct)),
            (f"{name} exact match, strict-match", _rate(table.base_correct_strict), _rate(table.tuned_correct_strict)),
        ]
        if perplexity:
            base, tuned = perplexity["base"]["perplexity"], perplexity["tuned"]["perplexity"]
            rows.append((f"{name} response perplexity (lower is better)", f"{base:.4g}", f"{tuned:.4g}"))
        paired = metrics["paired"]
        paired_lines.append(
            f"- {name}, {paired['examples']} questions: {paired['flips_wrong_to_right']} wrong→right, "
            f"{paired['flips_right_to_wrong']} right→wrong, exact McNemar p = {paired['mcnemar_p']:.3g}; difference "
            f"{paired['accuracy_diff']:+.3f} (95% paired bootstrap CI {paired['accuracy_diff_ci95_low']:+.3f} … "
            f"{paired['accuracy_diff_ci95_high']:+.3f})"
        )
    return [
        "## Evaluation",
        "",
        f"The tuned model (this adapter merged into its base's {cfg.merge_into} weights) against the base on the "
        f"same questions of each eval set ({', '.join(sets)}; params `eval_sets`): greedy answers of up to "
        f"{cfg.max_new_tokens} new tokens, scored as lm-evaluation-harness scores gsm8k.",
        "",
        "| metric | base | tuned |",
        "|---|---|---|",
        *(f"| {name} | {base} | {tuned} |" for name, base, tuned in rows),
        "",
        "Paired on the same questions:",
        "",
        *paired_lines,
        "",
        "Per question: `reports/comparison.md`.",
        "",
    ]


def evaluated_card(adapter_card: str, evaluation: list[str]) -> str:
    """The adapter's card with `evaluation` before its Load section, and without its pointer to this file."""
    head, found, load = adapter_card.partition("\n## Load\n")
    section = "\n".join(evaluation).strip("\n")
    text = f"{head.rstrip()}\n\n{section}\n" + (f"\n## Load\n{load}" if found else "")
    return text.replace(EVALUATION_POINTER + "\n", "").replace("\n\n\n", "\n\n")
