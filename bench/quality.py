"""Does fine-tuning make a real model better? Base vs tuned on the real GSM8K, with the pipeline's own code.

SmolLM2-135M-Instruct (from its GGUF file, dequantized once by the base stage's code), the whole train split,
the whole test set, greedy, lm-eval-style scoring. For each recipe (params changes over params.yaml) it trains
the adapter with the train stage's code and evaluates, on the same questions as the base:
- `adapter`: the 4-bit base + adapter, the model as trained;
- `dequantized`: the adapter merged into the dequantized NF4 weights (eval.merge_into=dequantized, the default);
- `original`: the adapter merged into the original 16-bit weights (eval.merge_into=original);
- `dequantized-fp32`: the dequantized merge in float32 (eval.dtype=float32), merge check in float32 too.
Each gets perplexity, exact match, stopping health and the paired comparison with the base (McNemar, flips);
with --svamp, the base and each tuned model also answer SVAMP (all rows of the file), paired, per problem type.
Adapters are kept under --work/adapters/<recipe> and reused by later calls (a new evaluation of a trained recipe).

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

from qlora_gsm8k.comparison import generations_table, set_metrics  # noqa: E402
from qlora_gsm8k.eval_config import EvalSetConfig  # noqa: E402
from qlora_gsm8k.eval_rows import normalise_rows, solution_examples  # noqa: E402
from qlora_gsm8k.eval_sets import load_eval_set  # noqa: E402
from qlora_gsm8k.evaluation import evaluate_model
from qlora_gsm8k.generation import answer_and_score  # noqa: E402
from qlora_gsm8k.io import write_json  # noqa: E402
from qlora_gsm8k.merging import load_with_adapter, merge_adapter  # noqa: E402
from qlora_gsm8k.modeling import load_for_eval, load_tokenizer, resolve_dtype  # noqa: E402
from qlora_gsm8k.paired import paired_comparison  # noqa: E402
from qlora_gsm8k.params_file import parse_params  # noqa: E402
from qlora_gsm8k.rows import read_jsonl  # noqa: E402
from qlora_gsm8k.sources import materialise_gguf  # noqa: E402
from qlora_gsm8k.training import train_adapter  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BEST = {
    "lora": {"target_modules": ALL_LINEAR, "r": 64, "alpha": 16, "use_rslora": True},
    "train": {"epochs": 3.0, "learning_rate": 5e-4, "micro_batch_size": 32},
}
# A task system message in place of SmolLM2's default one ("You are a helpful AI assistant named SmolLM...").
SYSTEM = (
    "You solve grade-school math problems. Reason step by step, then give the final answer on its own line as "
    "'#### <number>' and stop."
)
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
    "all-linear-r64-rslora-3ep-lr5e-4-mb32": BEST,
    "all-linear-r64-rslora-4ep-lr5e-4-mb32": {**BEST, "train": {**BEST["train"], "epochs": 4.0}},
    "all-linear-r64-rslora-3ep-lr5e-4-mb32-system": {**BEST, "prompt": {"system": SYSTEM}},
    "all-linear-2ep-lr2e-3-mb32": {
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"epochs": 2.0, "learning_rate": 2e-3, "micro_batch_size": 32},
    },
    # Against the hit-cap goal (issue 15): the best one-epoch method (rsLoRA r16) trained longer, and the preset
    # at twice its learning rate.
    "rslora-r16-3ep-lr1e-3-mb32": {
        "peft": {"method": "rslora"},
        "lora": {"target_modules": ALL_LINEAR},
        "train": {"epochs": 3.0, "learning_rate": 1e-3, "micro_batch_size": 32},
    },
    "all-linear-r64-rslora-3ep-lr1e-3-mb32": {**BEST, "train": {**BEST["train"], "learning_rate": 1e-3}},
}
# PEFT methods (peft.method), one epoch over the whole split each, at a learning rate in the method's usual range
# (IA3 and the virtual-token methods train far fewer parameters and take larger steps).
_ONE_EPOCH = {"epochs": 1.0, "micro_batch_size": 32}
_ALL_LINEAR_R16 = {"target_modules": ALL_LINEAR}
for _method, _lr in (
    ("lora", 1e-3),
    ("dora", 1e-3),
    ("rslora", 1e-3),
    ("ia3", 1e-2),
    ("prompt", 3e-2),
    ("prefix", 1e-2),
):
    RECIPES[f"method-{_method}-1ep"] = {
        "peft": {"method": _method},
        "lora": _ALL_LINEAR_R16,
        "train": {**_ONE_EPOCH, "learning_rate": _lr},
    }
EVALS = ("adapter", "dequantized", "original", "dequantized-fp32")
REPO_ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def recipe_params(changes: dict, merge_into: str = "dequantized", dtype: str | None = None):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in copy.deepcopy(changes).items():
        raw[section].update(values)
    raw["eval"]["merge_into"] = merge_into
    if dtype:
        raw["eval"]["dtype"] = dtype
    return parse_params(raw)


def evaluate(model, tokenizer, examples, params, label: str, out: Path, svamp=None) -> tuple[dict, list[dict], list]:
    start = time.perf_counter()
    # Labelled "scored", never "base": the base in 4-bit is not scored here.
    solutions = solution_examples(examples)
    perplexity, rows, summary = evaluate_model(model, tokenizer, examples, solutions, params, "scored", "")
    summary.update(perplexity=perplexity["scored"]["perplexity"], seconds=time.perf_counter() - start)
    (out / f"generations_{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log(
        f"{label}: strict {summary['exact_match_strict']:.4f} flexible {summary['exact_match_flexible']:.4f} "
        f"hit cap {summary['hit_token_cap_rate']:.3f} ppl {summary['perplexity']:.3f} ({summary['seconds']:.0f} s)"
    )
    svamp_rows = []
    if svamp:
        start = time.perf_counter()
        svamp_rows, summary["svamp"] = answer_and_score(model, tokenizer, svamp, params)
        summary["svamp"]["seconds"] = time.perf_counter() - start
        (out / f"svamp_generations_{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in svamp_rows))
        log(f"{label}: SVAMP flexible {summary['svamp']['exact_match_flexible']:.4f} over {len(svamp_rows)}")
    return summary, rows, svamp_rows


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
    parser.add_argument("--svamp", type=Path, help="SVAMP.json: base and tuned answer all its rows too")
    parser.add_argument("--base-system", action="store_true", help="evaluate the base with the recipes' system prompt")
    parser.add_argument("--prepare-only", action="store_true", help="dequantize the base into --work, then stop")
    parser.add_argument("--train-first", action="store_true", help="train every recipe before the base evaluation")
    parser.add_argument(
        "--wait-for-base", type=float, default=0, help="seconds to wait for another process's base evaluation"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quality")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    train = read_jsonl(args.data / "train.jsonl")[: args.train_rows]
    test_examples = read_jsonl(args.data / "test.jsonl")[: args.eval_rows]
    test = normalise_rows("gsm8k", [e.to_json() for e in test_examples], "test.jsonl")
    svamp_set = EvalSetConfig(layout="svamp", source=str(args.svamp))
    svamp = load_eval_set("svamp", svamp_set, parse_params({}))[0][: args.eval_rows] if args.svamp else None

    base_dir = args.work / "base"
    if not (base_dir / "config.json").is_file():
        log(f"dequantizing {args.gguf} into {base_dir}")
        base_dir.mkdir(parents=True, exist_ok=True)
        materialise_gguf(args.gguf, base_dir)
    if args.prepare_only:
        return
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
    if args.base_system:  # the base is asked exactly as the system-prompt recipes ask their tuned models
        eval_changes["prompt"] = {"system": SYSTEM}

    system_tag = "system" if args.base_system else "nosystem"
    base_cache = args.work / f"base_eval_{len(test)}_{args.max_new_tokens}_{system_tag}.json"

    def base_evaluation() -> tuple[list[dict], list[dict]]:
        """The base's rows (GSM8K, SVAMP): from the cache another call or process wrote, else evaluated here."""
        deadline = time.monotonic() + args.wait_for_base
        while not base_cache.is_file() and time.monotonic() < deadline:
            time.sleep(5)
        cached = json.loads(base_cache.read_text()) if base_cache.is_file() else None
        if cached and (not svamp or len(cached[2]) == len(svamp)):
            results["base"], base_rows, base_svamp = cached
            log(f"base evaluation reused from {base_cache}")
        else:
            params = recipe_params(eval_changes)
            model, tokenizer, precision = load_for_eval(base_dir, params.eval.dtype)
            summary, base_rows, base_svamp = evaluate(model, tokenizer, test, params, "base", args.out, svamp)
            results["base"] = {**summary, "precision": precision, "rambling": rambling(base_rows)}
            write_json(base_cache, [results["base"], base_rows, base_svamp])
            del model
        results["base_prompt_system"] = eval_changes.get("prompt", {}).get("system")
        write_json(results_path, results)
        return base_rows, base_svamp

    recipes = [name for name in args.recipes.split(",") if name]
    for name in recipes:
        if (RECIPES[name].get("prompt", {}).get("system") == SYSTEM) != args.base_system:
            raise SystemExit(f"{name}: base and tuned must be asked the same way (--base-system for system recipes)")

    def recipe_changes(name: str) -> dict:
        return {**RECIPES[name], **{k: {**RECIPES[name].get(k, {}), **v} for k, v in eval_changes.items()}}

    def trained_adapter(name: str) -> Path:
        """The recipe's adapter: trained now, or kept from an earlier call on this machine."""
        params = recipe_params(recipe_changes(name))
        record = results["recipes"].setdefault(name, {"changes": recipe_changes(name)})
        adapter = args.work / "adapters" / f"{name}_{len(train)}"
        if (adapter / "adapter_config.json").is_file():
            record["train"] = json.loads((adapter / "train_metrics.json").read_text())
            log(f"{name}: adapter reused from {adapter} (trained in an earlier call)")
        else:
            log(f"{name}: training on {len(train)} rows")
            with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                record["train"] = train_adapter(
                    params, train, base_dir, adapter_dir=Path(tmp) / "adapter", checkpoint_root=Path(tmp) / "ckpt",
                    live_dir=None,
                )  # fmt: skip
                write_json(Path(tmp) / "adapter" / "train_metrics.json", record["train"])
                adapter.parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / "adapter").rename(adapter)
            log(f"{name}: {record['train']['seconds']:.0f} s, {record['train']['tokens_per_second']:.0f} tokens/s")
        write_json(results_path, results)
        return adapter

    def evaluate_recipe(name: str, adapter: Path, base_rows: list[dict], base_svamp: list[dict]) -> None:
        changes, record = recipe_changes(name), results["recipes"][name]
        params = recipe_params(changes)
        for kind in [k for k in args.evals.split(",") if k]:
            label = f"{name}_{kind}"
            eval_params = params
            if kind == "adapter":
                model = load_with_adapter(base_dir, adapter, params.eval.dtype, quant=params.quant)
                tokenizer, check = load_tokenizer(adapter), None
            else:
                mode, _, precision = kind.partition("-")
                eval_params = recipe_params(changes, merge_into=mode, dtype=precision.replace("fp", "float") or None)
                model, tokenizer, check = merge_adapter(base_dir, adapter, test_examples[:16], eval_params)
            summary, rows, svamp_rows = evaluate(model, tokenizer, test, eval_params, label, args.out, svamp)
            record[kind] = {**summary, "merge_check": check, "rambling": rambling(rows)}
            record[kind]["paired_vs_base"] = paired(base_rows, rows)
            if svamp:
                record[kind]["svamp_vs_base"] = set_metrics(generations_table(svamp, base_svamp, svamp_rows), {})
            p = record[kind]["paired_vs_base"]["flexible"]
            log(
                f"{label}: flexible vs base {p['flips_wrong_to_right']} wrong→right, "
                f"{p['flips_right_to_wrong']} right→wrong, McNemar p {p['mcnemar_p']:.3g}; merge check {check}"
            )
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            write_json(results_path, results)

    if args.train_first:  # several of these processes share one GPU: each trains while another evaluates the base
        adapters = {name: trained_adapter(name) for name in recipes}
        base_rows, base_svamp = base_evaluation()
    else:
        base_rows, base_svamp = base_evaluation()
        adapters = {name: trained_adapter(name) for name in recipes}
    for name in recipes:
        evaluate_recipe(name, adapters[name], base_rows, base_svamp)
    results["precision"] = str(resolve_dtype("auto")).removeprefix("torch.")
    write_json(results_path, results)


if __name__ == "__main__":
    main()
