"""How exact is the merged model, by the precision it is merged and saved in (issue 30 item 2)?

For each adapter (trained here through the train stage's code, or given), on the merge check's rows:
- the trained model: the 4-bit base + adapter, computed in float32 (`ref_fp32`, the most exact computation of what
  training produced) and in bf16 (`ref_bf16`, what bf16 training computed with);
- the merged model: the adapter merged into the dequantized NF4 weights, the sum taken in float32 and rounded once to
  bf16, fp16 or float32 (`fp32-sum`), or taken in bf16 as the merge stage did until now (`bf16-sum`); each run in the
  dtype it is saved in;
- the base in 4-bit without the adapter (what training changed, for scale).
Each pair: mean KL, top-1 agreement over every response token and over the tokens where the reference's top two
logits are at least MARGIN apart ("decided": where rounding cannot honestly flip the arg-max), and |Δlogit|.

    python bench/merge_precision.py --base DIR --data GSM8K_DIR --out OUT [--methods lora,rslora,dora]
        [--train-rows 2000] [--check-rows 64] [--adapter NAME=DIR ...]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from qlora_gsm8k.io import write_json  # noqa: E402
from qlora_gsm8k.logits import response_logits  # noqa: E402
from qlora_gsm8k.merging import adapter_in_dtype, load_with_adapter  # noqa: E402
from qlora_gsm8k.modeling import dequantized_weights, load_model, load_tokenizer, quant_in_dtype  # noqa: E402
from qlora_gsm8k.params_file import parse_params  # noqa: E402
from qlora_gsm8k.prompts import ChatFormat  # noqa: E402
from qlora_gsm8k.rows import read_jsonl  # noqa: E402
from qlora_gsm8k.sources import materialise_gguf  # noqa: E402
from qlora_gsm8k.training import train_adapter  # noqa: E402

MARGINS = (0.25, 0.5, 1.0, 2.0)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The adapters measured: the shipped defaults (lora on q/v), and the full-split preset's shape (all seven linear
# layers, lr 1e-3, micro-batch 32) as rsLoRA and as DoRA.
RECIPES = {
    "lora-defaults": {"peft": {"method": "lora"}},
    "rslora-preset": {
        "peft": {"method": "rslora"},
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"learning_rate": 1e-3, "micro_batch_size": 32},
    },
    "dora-preset": {
        "peft": {"method": "dora"},
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"learning_rate": 1e-3, "micro_batch_size": 32},
    },
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def recipe_params(changes: dict, eval_dtype: str = "float32"):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in copy.deepcopy(changes).items():
        raw[section].update(values)
    raw["eval"]["dtype"] = eval_dtype
    raw["train"]["save_steps"] = 10_000
    return parse_params(raw)


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    ref, got = torch.cat(reference).double(), torch.cat(other).double()
    log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    top2 = ref.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    same = ref.argmax(-1) == got.argmax(-1)
    diff = (got - ref).abs().max(-1).values
    out = {
        "tokens": int(ref.shape[0]),
        "mean_kl": kl,
        "top1": float(same.double().mean()),
        "max_abs_dlogit_p50": float(diff.median()),
        "max_abs_dlogit_p99": float(diff.quantile(0.99)),
        "max_abs_dlogit_max": float(diff.max()),
        "top2_gap_p50": float(gap.median()),
    }
    for margin in MARGINS:
        decided = gap >= margin
        out[f"decided_share_{margin}"] = float(decided.double().mean())
        out[f"top1_decided_{margin}"] = float(same[decided].double().mean()) if decided.any() else None
        out[f"flips_decided_{margin}"] = int((~same[decided]).sum())
    return out


def merged_model(base_dir: Path, adapter: Path, weights32: dict, sum_dtype: torch.dtype, save_dtype: torch.dtype):
    """The adapter merged into the dequantized weights with the sum taken in `sum_dtype`, then cast to `save_dtype`
    (what save_pretrained would write)."""
    model = load_with_adapter(base_dir, adapter, str(sum_dtype).removeprefix("torch."), base_weights=weights32)
    return model.merge_and_unload().to(save_dtype)


def measure(base_dir: Path, adapter: Path, examples, params) -> dict:
    tokenizer = load_tokenizer(adapter)
    chat = ChatFormat.of(tokenizer, params.prompt.system)
    batch = params.eval.batch_size

    def logits_of(model):
        return response_logits(model, tokenizer, examples, batch, chat)

    from peft import PeftModel

    refs, weights = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        base_4bit = load_model(base_dir, dtype=dtype, quant=quant_in_dtype(params.quant, dtype))
        if dtype == torch.float32:
            weights = dequantized_weights(base_4bit)  # before the first forward pass (bench/MERGE.md)
            refs["base_4bit_fp32"] = logits_of(base_4bit)
        refs[f"ref_{name}"] = logits_of(adapter_in_dtype(PeftModel.from_pretrained(base_4bit, str(adapter)), dtype))
        del base_4bit
        torch.cuda.empty_cache()
    merged = {}
    for sum_name, sum_dtype in (("fp32-sum", torch.float32), ("bf16-sum", torch.bfloat16)):
        saves = (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
        for save_name, save_dtype in saves if sum_name == "fp32-sum" else saves[:1]:
            weights_in = {k: v.to(sum_dtype) for k, v in weights.items()}
            merged[f"{sum_name}_saved-{save_name}"] = logits_of(
                merged_model(base_dir, adapter, weights_in, sum_dtype, save_dtype)
            )
    rows = {"training_effect (base 4-bit vs ref_fp32)": compare(refs["ref_fp32"], refs["base_4bit_fp32"])}
    rows["ref_bf16 vs ref_fp32 (bf16 runtime noise)"] = compare(refs["ref_fp32"], refs["ref_bf16"])
    rows["ref_fp16 vs ref_fp32 (fp16 runtime noise)"] = compare(refs["ref_fp32"], refs["ref_fp16"])
    for name, logits in merged.items():
        save = name.rsplit("-", 1)[1]
        rows[f"{name} vs ref_fp32"] = compare(refs["ref_fp32"], logits)
        rows[f"{name} vs ref_{save}"] = compare(refs[f"ref_{save}"], logits)
    return rows


def markdown(results: dict) -> str:
    lines = []
    for adapter, rows in results["adapters"].items():
        lines += [
            f"\n### {adapter}\n",
            "| pair | tokens | mean KL | top-1 | top-1 where gap ≥ 0.5 (share) | ≥ 1.0 (share) | p99 max|Δlogit| |",
            "|---|---|---|---|---|---|---|",
        ]
        for pair, m in rows["pairs"].items():

            def decided(margin, m=m):
                top1 = m[f"top1_decided_{margin}"]
                return f"{top1:.4f} ({m[f'decided_share_{margin}']:.2f})" if top1 is not None else "—"

            lines.append(
                f"| {pair} | {m['tokens']} | {m['mean_kl']:.3g} | {m['top1']:.4f} | {decided(0.5)} | {decided(1.0)} "
                f"| {m['max_abs_dlogit_p99']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a base directory as the base stage writes it")
    parser.add_argument("--gguf", type=Path, help="first convert this GGUF file into --base, as the base stage does")
    parser.add_argument("--data", type=Path, required=True, help="GSM8K directory (train.jsonl, test.jsonl)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="model")
    parser.add_argument("--methods", default=",".join(RECIPES))
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--check-rows", type=int, default=64)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR: measure this adapter as well")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.gguf and not (args.base / "config.json").is_file():
        materialise_gguf(args.gguf, args.base)
    train = read_jsonl(args.data / "train.jsonl")[: args.train_rows]
    examples = read_jsonl(args.data / "test.jsonl")[: args.check_rows]
    results = {"label": args.label, "check_rows": len(examples), "adapters": {}}
    adapters = {}
    for name in [m for m in args.methods.split(",") if m]:
        params = recipe_params(RECIPES[name])
        target = args.out / "adapters" / name
        if not (target / "adapter_config.json").is_file():
            with tempfile.TemporaryDirectory() as tmp:
                log(f"{name}: training on {len(train)} rows")
                metrics = train_adapter(params, train, args.base, Path(tmp) / "adapter", Path(tmp) / "ckpt", None)
                target.parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / "adapter").rename(target)
            log(f"{name}: {metrics['seconds']:.0f} s, final loss {metrics.get('train_loss')}")
        adapters[name] = (target, params)
    for spec in args.adapter:
        name, _, path = spec.partition("=")
        adapters[name] = (Path(path), recipe_params({}))
    for name, (adapter, params) in adapters.items():
        log(f"{name}: measuring")
        results["adapters"][name] = {"adapter": str(adapter), "pairs": measure(args.base, adapter, examples, params)}
        write_json(args.out / "merge_precision.json", results)
        log(markdown({"adapters": {name: results["adapters"][name]}}))
    (args.out / "merge_precision.md").write_text(f"## {args.label}\n" + markdown(results))


if __name__ == "__main__":
    main()
