"""Training throughput on 1 GPU against several (DDP through `train.num_gpus`), through the train stage itself.

    python bench/multi_gpu.py --data .bench/gsm8k --tokenizer .bench/tokenizer.model --rows 7473 --gpus 2 --out OUT

Runs `python -m stages.train` on the same rows of the TinyLlama-1.1B architecture (random weights, built by
`bench/bench.py --save-base`), each with params.yaml's settings except:
- 1 GPU: the defaults (micro-batch M);
- N GPUs, same effective batch: micro-batch M / N per GPU, so the loss curve should match the 1-GPU one;
- N GPUs, same micro-batch: M per GPU (effective batch N × M), the usual data-parallel scaling figure.
Writes results.json (tokens/s, seconds, losses from DVCLive), table.md and losses.png to OUT.
`--gpus 1` runs the 1-GPU defaults against the same without gradient clipping (`train.max_grad_norm=0`).
`--model DIR` reuses a base built before (or any saved model, e.g. SmolLM2 dequantized by bench/quality.py);
`--cpu-smoke` runs the same on CPU with tiny-llama and gloo (tests)."""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_train(name: str, params: dict, base: Path, train_file: Path, work: Path) -> dict:
    params_file = work / f"{name}.params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    live = work / f"{name}-live"
    metrics_file = work / f"{name}.json"
    command = [sys.executable, "-m", "stages.train", "--params", str(params_file), "--base", str(base)]
    command += ["--train", str(train_file), "--adapter-out", str(work / f"{name}-adapter")]
    command += ["--metrics-out", str(metrics_file), "--live-dir", str(live), "--checkpoints", str(work / "ckpt")]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        return {"error": result.stderr[-2000:], "stage_seconds": wall}
    metrics = json.loads(metrics_file.read_text())["train"]
    return {**metrics, "stage_seconds": wall, "losses": _losses(live)}


def _losses(live: Path) -> list[float]:
    tsv = live / "plots" / "metrics" / "loss.tsv"
    if not tsv.is_file():
        return []
    with tsv.open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]


def table(results: dict) -> str:
    runs = results["runs"]
    one = runs.get("1 GPU", {}).get("tokens_per_second")
    lines = [
        "| run | GPUs | micro-batch per GPU | effective batch | real tokens/s | training s | stage s | × 1 GPU "
        "| mean loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | failed | | | | | | | |")
            continue
        mean = sum(r["losses"]) / len(r["losses"]) if r["losses"] else float("nan")
        ratio = r["tokens_per_second"] / one if one else float("nan")
        lines.append(
            f"| {name} | {r['num_processes']} | {r['micro_batch']} | {r['effective_batch']} | "
            f"{r['tokens_per_second']:,.0f} | {r['seconds']:.1f} | {r['stage_seconds']:.1f} | {ratio:.2f} | "
            f"{mean:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="directory with train.jsonl (GSM8K layout)")
    parser.add_argument("--tokenizer", type=Path, help="Llama-2 tokenizer.model, to build the base")
    parser.add_argument("--model", type=Path, help="a base built before (bench/bench.py --save-base)")
    parser.add_argument("--rows", type=int, default=7473)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny-llama, synthetic rows, 2 CPU processes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the params every run starts from")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qlora-multi-gpu-"))
    atexit.register(shutil.rmtree, work, True)  # a TinyLlama-arch base is 2.2 GB: never left behind
    params = yaml.safe_load(args.params.read_text())
    if args.cpu_smoke:
        sys.path.insert(0, str(ROOT))
        from qlora_gsm8k.modeling import save_base
        from qlora_gsm8k.synthetic import write_dataset_dir
        from qlora_gsm8k.tiny import build_tiny_llama

        args.data = write_dataset_dir(work / "data", train_rows=args.rows, test_rows=4)
        model, tokenizer = build_tiny_llama()
        base = work / "base"
        save_base(model, tokenizer, base)
    elif args.model:
        base = args.model
    else:
        if not (args.data and args.tokenizer):
            parser.error("--data and --tokenizer (or --model) are needed unless --cpu-smoke")
        base = work / "base"
        build = [sys.executable, str(ROOT / "bench" / "bench.py"), "--save-base", str(base)]
        subprocess.run([*build, "--tokenizer", str(args.tokenizer)], cwd=ROOT, check=True)
    if args.data is None:
        parser.error("--data is needed")
    train_file = work / "train.jsonl"
    lines = (args.data / "train.jsonl").read_text().splitlines()[: args.rows]
    train_file.write_text("\n".join(lines) + "\n")

    micro = params["train"]["micro_batch_size"]
    if micro % args.gpus:
        parser.error(f"train.micro_batch_size={micro} does not split over {args.gpus} GPUs")
    configs = {"1 GPU": {"num_gpus": 1}}
    if args.gpus > 1:
        same_effective = {"num_gpus": args.gpus, "micro_batch_size": micro // args.gpus}
        configs[f"{args.gpus} GPUs, same effective batch"] = same_effective
        configs[f"{args.gpus} GPUs, same micro-batch"] = {"num_gpus": args.gpus}
    else:  # one GPU: the train stage's speed with the per-step gradient-norm sync and without it
        configs["1 GPU, no gradient clipping"] = {"num_gpus": 1, "max_grad_norm": 0.0}
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    from bench import _versions, plot_losses  # bench/bench.py

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
        "versions": _versions(),
        "rows": len(lines),
        "runs": {},
    }
    for name, train_changes in configs.items():
        run_params = json.loads(json.dumps(params))
        run_params["model"]["name"] = str(base.resolve())
        run_params["train"].update(train_changes)
        result = run_train(name.replace(" ", "-").replace(",", ""), run_params, base, train_file, work)
        result["micro_batch"] = run_params["train"]["micro_batch_size"]
        results["runs"][name] = result
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {result.get('tokens_per_second') or result.get('error', '')[-300:]}", flush=True)
    rendered = table(results)
    (args.out / "table.md").write_text(rendered + "\n")
    plot_losses(results["runs"], args.out / "losses.png")
    print(rendered)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
