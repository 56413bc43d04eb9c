"""Does fine-tuning make a real model better? Base vs tuned on the real GSM8K, with the pipeline's own code.

SmolLM2-135M-Instruct (from its GGUF file, dequantized once by the base stage's code), the whole train split,
the whole test set, greedy, lm-eval-style scoring. For each recipe (params changes over params.yaml) it trains
the adapter with the train stage's code and evaluates, on the same questions as the base:
- `adapter`: the 4-bit base + adapter, the model as trained;
- `dequantized`: the adapter merged into the dequantized NF4 weights (eval.merge_into=dequantized, the default);
- `original`: the adapter merged into the original 16-bit weights (eval.merge_into=original).
Each gets perplexity, exact match, stopping health and the paired comparison with the base (McNemar, flips).

GPU (bench/QUALITY.md has the exact calls):
    python3 bench/quality.py --gguf /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf --data .bench/gsm8k \
        --recipes defaults --evals adapter,dequantized,original --out $OUT
CPU smoke run (seconds per row; a check that the script runs):
    python bench/quality.py --gguf <file> --data ../shared/data/gsm8k --train-rows 8 --eval-rows 4 \
        --max-new-tokens 16 --recipes defaults --evals dequantized --out /tmp/quality
The base model directory and the base's evaluation are kept under --work (default /tmp/quality) and reused by
later calls on the same machine."""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qlora_gsm8k.config import parse_params  # noqa: E402
from qlora_gsm8k.evaluation import evaluate_model, paired_comparison  # noqa: E402
from qlora_gsm8k.gsm8k import read_jsonl  # noqa: E402
from qlora_gsm8k.io import write_json  # noqa: E402
from qlora_gsm8k.merging import load_with_adapter, merge_adapter  # noqa: E402
from qlora_gsm8k.modeling import load_for_eval, load_tokenizer, resolve_dtype  # noqa: E402
from qlora_gsm8k.sources import materialise_gguf  # noqa: E402
from qlora_gsm8k.training import train_adapter  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# params changes over params.yaml, by section.
RECIPES = {
    "defaults": {},
    "all-linear-2ep-lr4e-4-mb32": {
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"epochs": 2.0, "learning_rate": 4e-4, "micro_batch_size": 32},
    },
    "all-linear-2ep-lr1e-3-mb32": {
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"epochs": 2.0, "learning_rate": 1e-3, "micro_batch_size": 32},
    },
    "all-linear-3ep-lr1e-3-mb32": {
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"epochs": 3.0, "learning_rate": 1e-3, "micro_batch_size": 32},
    },
    "all-linear-r64-rslora-3ep-lr5e-4-mb32": {
        "lora": {"target_modules": ALL_LINEAR, "r": 64, "alpha": 16, "use_rslora": True},
        "train": {"epochs": 3.0, "learning_rate": 5e-4, "micro_batch_size": 32},
    },
}
EVALS = ("adapter", "dequantized", "original")
REPO_ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def recipe_params(changes: dict, merge_into: str = "dequantized"):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in copy.deepcopy(changes).items():
        raw[section].update(values)
    raw["eval"]["merge_into"] = merge_into
    return parse_params(raw)


def evaluate(model, tokenizer, examples, params, label: str, out: Path) -> tuple[dict, list[dict]]:
    start = time.perf_counter()
    perplexity, rows, summary = evaluate_model(model, tokenizer, examples, params)
    summary.update(perplexity=perplexity["perplexity"], seconds=time.perf_counter() - start)
    (out / f"generations_{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log(
        f"{label}: strict {summary['exact_match_strict']:.4f} flexible {summary['exact_match_flexible']:.4f} "
        f"hit cap {summary['hit_token_cap_rate']:.3f} ppl {summary['perplexity']:.3f} ({summary['seconds']:.0f} s)"
    )
    return summary, rows


def paired(base_rows: list[dict], rows: list[dict]) -> dict:
    return {
        kind: paired_comparison([r[f"correct_{kind}"] for r in base_rows], [r[f"correct_{kind}"] for r in rows])
        for kind in ("flexible", "strict")
    }


def rambling(rows: list[dict]) -> dict:
    """What the outputs that hit the token cap did: answered and went on, or never gave a '#### N' line."""
    capped = [r for r in rows if r["hit_token_cap"]]
    answered = [r for r in capped if r["number_strict"] is not None]
    return {
        "capped": len(capped),
        "capped_after_a_strict_answer": len(answered),
        "capped_with_repeated_answer_lines": sum(r["output"].count("####") > 1 for r in capped),
        "capped_correct_strict": sum(r["correct_strict"] for r in capped),
        "examples": [r["output"][-300:] for r in capped[:5]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="directory with train.jsonl and test.jsonl")
    parser.add_argument("--train-rows", type=int, default=None, help="default: the whole train split")
    parser.add_argument("--eval-rows", type=int, default=None, help="default: the whole test set")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--recipes", default="defaults", help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--evals", default="adapter,dequantized", help=f"comma-separated, of: {', '.join(EVALS)}")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quality")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    train = read_jsonl(args.data / "train.jsonl")[: args.train_rows]
    test = read_jsonl(args.data / "test.jsonl")[: args.eval_rows]

    base_dir = args.work / "base"
    if not (base_dir / "config.json").is_file():
        log(f"dequantizing {args.gguf} into {base_dir}")
        base_dir.mkdir(parents=True, exist_ok=True)
        materialise_gguf(args.gguf, base_dir)
    results_path = args.out / "results.json"
    results = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "peft", "bitsandbytes")},
        "train_rows": len(train),
        "eval_rows": len(test),
        "recipes": {},
    }
    eval_changes = {"eval": {"max_new_tokens": args.max_new_tokens}} if args.max_new_tokens else {}

    base_cache = args.work / f"base_eval_{len(test)}_{args.max_new_tokens}.json"
    if base_cache.is_file():
        results["base"], base_rows = json.loads(base_cache.read_text())
        log(f"base evaluation reused from {base_cache}")
    else:
        params = recipe_params(eval_changes)
        model, tokenizer, precision = load_for_eval(base_dir, params.eval.dtype)
        summary, base_rows = evaluate(model, tokenizer, test, params, "base", args.out)
        results["base"] = {**summary, "precision": precision, "rambling": rambling(base_rows)}
        base_cache.write_text(json.dumps([results["base"], base_rows]))
        del model
    write_json(results_path, results)

    for name in args.recipes.split(","):
        changes = {**RECIPES[name], **{k: {**RECIPES[name].get(k, {}), **v} for k, v in eval_changes.items()}}
        params = recipe_params(changes)
        record = {"changes": changes}
        results["recipes"][name] = record
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            tmp = Path(tmp)
            log(f"{name}: training on {len(train)} rows")
            record["train"] = train_adapter(
                params, train, base_dir, adapter_dir=tmp / "adapter", checkpoint_root=tmp / "ckpt", live_dir=None
            )
            log(f"{name}: {record['train']['seconds']:.0f} s, {record['train']['tokens_per_second']:.0f} tokens/s")
            write_json(results_path, results)
            for kind in args.evals.split(","):
                label = f"{name}_{kind}"
                if kind == "adapter":
                    model = load_with_adapter(base_dir, tmp / "adapter", params.eval.dtype, quant=params.quant)
                    tokenizer, check = load_tokenizer(tmp / "adapter"), None
                else:
                    merge_params = recipe_params(changes, merge_into=kind)
                    model, tokenizer, check = merge_adapter(base_dir, tmp / "adapter", test[:16], merge_params)
                summary, rows = evaluate(model, tokenizer, test, params, label, args.out)
                record[kind] = {**summary, "merge_check": check, "rambling": rambling(rows)}
                record[kind]["paired_vs_base"] = paired(base_rows, rows)
                p = record[kind]["paired_vs_base"]["flexible"]
                log(
                    f"{label}: flexible vs base {p['flips_wrong_to_right']} wrong→right, "
                    f"{p['flips_right_to_wrong']} right→wrong, McNemar p {p['mcnemar_p']:.3g}; merge check {check}"
                )
                del model
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                write_json(results_path, results)
    results["precision"] = str(resolve_dtype("auto")).removeprefix("torch.")
    write_json(results_path, results)


if __name__ == "__main__":
    main()
