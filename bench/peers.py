"""This project against TRL and Unsloth: the same recipe, model, rows and seed through each, every system in its
own process, and (SmolLM2) each adapter scored by our evaluator. Method and GPU commands: bench/PEERS.md.

Systems (--systems, comma-separated):
- ours: the train stage's code with its defaults (qlora_gsm8k.training.train_adapter via bench.bench.train_ours);
  ours-eager / ours-graphs: with train.cuda_graphs false / true; ours-graphs-noliger, ours-static-eager: its parts;
- trl-defaults: TRL's SFTTrainer + PEFT LoraConfig on the bitsandbytes NF4 base, TRL's defaults (gradient
  checkpointing on, padded batches);
- trl-tuned: the same, as TRL's docs advise for speed: no gradient checkpointing, padding_free, Liger kernels
  (where liger-kernel imports on a CUDA GPU; recorded);
- unsloth: FastLanguageModel (4-bit load, get_peft_model with its "unsloth" gradient checkpointing) trained
  with TRL's SFTTrainer, as Unsloth's notebooks do (GPU only: on CPU it is recorded as failed);
- unsloth-dropout0 (not in the default list): Unsloth with LoRA dropout 0, which its fast LoRA path needs; not
  the recipe.
The recipe: the README's full-split preset (bench/quality.py's rslora-r16-3ep-lr1e-3-mb32: rsLoRA r 16 / alpha
32, all seven linear layers, lr 1e-3, micro-batch 32) for --epochs (1) over params.yaml, one Params object for
all; --set section.key=value changes it (recorded).

GPU (bench/gpu_peers.sh runs these on the H200):
    python bench/peers.py --tinyllama-arch .bench/tokenizer.model --data .bench/gsm8k --train-rows 2000 \
        --no-eval --unsloth-pythonpath /tmp/site-unsloth --out /tmp/peers/tinyllama
    python bench/peers.py --gguf /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf --data .bench/gsm8k \
        --unsloth-pythonpath /tmp/site-unsloth --out /tmp/peers/smollm2
CPU smoke (tests/test_peers.py; a couple of minutes):
    python bench/peers.py --tiny --train-rows 16 --eval-rows 4 --max-new-tokens 16 --out /tmp/peers
Writes --out/peers.json (everything), peers.md (the tables), peers_loss.png, and per system
--out/<system>/{train.json,train.log,eval.json,eval.log,generations.jsonl,adapter/}.
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

# Run as a script, bench/ itself is first on the path and `bench` would be bench/bench.py, not this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peer_report import write_report  # noqa: E402
from bench.peer_systems import SYSTEMS, TIMING, child_main  # noqa: E402
from qlora_gsm8k.io import file_sha256, read_json  # noqa: E402

DEFAULT_SYSTEMS = "ours,trl-defaults,trl-tuned,unsloth"
PRESET = "rslora-r16-3ep-lr1e-3-mb32"  # bench/quality.py's name for the README's full-split preset
# The tiny CPU model: 16 rows at micro-batch 32 would be one optimizer step, all of it warmup (refused).
TINY_CHANGES = ("train.micro_batch_size=4",)


RUNNING: set[subprocess.Popen] = set()  # the children alive now, ended when this process is stopped
STOPPING = threading.Event()


class Stopped(Exception):
    """SIGTERM (a `timeout` around this script): the running child is ended and what ran is written."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def recipe(args, train_rows: int):
    """One Params for every system: params.yaml, the full-split preset at --epochs, then --set."""
    from bench.quality import RECIPES
    from qlora_gsm8k.params_file import load_params, params_as_dict, parse_params

    raw = params_as_dict(load_params(args.params))
    changes = copy.deepcopy(RECIPES[PRESET])
    changes["train"]["epochs"] = args.epochs
    changes["data"] = {"train_size": train_rows}  # so params' own step check sees the real row count
    sets = [*args.set]
    if args.tiny and not any(s.startswith("train.micro_batch_size=") for s in sets):
        sets += TINY_CHANGES
    if args.max_new_tokens:
        sets.append(f"eval.max_new_tokens={args.max_new_tokens}")
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = yaml.safe_load(value)
    for section, values in changes.items():
        raw[section].update(values)
    return parse_params(raw), {"preset": PRESET, "changes": changes, "set": sets}


def prepare_base(args, work: Path) -> tuple[Path, dict]:
    """The base model directory every system loads (built once; kept with --reuse)."""
    base = work / "base"
    if args.gguf:
        model = {"kind": "gguf", "file": str(args.gguf), "sha256": file_sha256(args.gguf)}
    elif args.tinyllama_arch:
        model = {"kind": "tinyllama-arch (random weights)", "tokenizer": str(args.tinyllama_arch)}
    else:
        model = {"kind": "tiny-llama (qlora_gsm8k.tiny, random weights)"}
    marker = base / "peers_base.json"
    if args.reuse and marker.is_file() and read_json(marker) == model:
        log(f"base reused from {base}")
        return base, model
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log(f"building the base model in {base}: {model['kind']}")
    if args.gguf:
        from qlora_gsm8k.sources import materialise_gguf

        materialise_gguf(args.gguf, base)
    elif args.tinyllama_arch:
        from bench.bench import build_tinyllama_arch_base

        build_tinyllama_arch_base(args.tinyllama_arch, base)
    else:
        from qlora_gsm8k.modeling import save_base
        from qlora_gsm8k.tiny import build_tiny_llama

        save_base(*build_tiny_llama(), base)
    from qlora_gsm8k.io import write_json

    write_json(marker, model)
    return base, model


def run_child(args, mode: str, system: str, out: Path, extra: list[str], deadline: float | None) -> dict:
    """One system (or one evaluation) in its own process; its output streamed with a prefix and kept in a log.
    A process that dies without writing its result is recorded with its exit code and last lines."""
    result_file = out / f"{mode}.json"
    setup_file = args.out / "setup.json"
    if args.reuse and result_file.is_file():
        kept = read_json(result_file)
        same_setup = kept.get("setup_sha256") == file_sha256(setup_file)
        if kept.get("status") == "ok" and same_setup and kept.get("evaluated_as", args.eval_as) == args.eval_as:
            log(f"{system} {mode}: reused {result_file}")
            return kept
    if deadline is not None and time.monotonic() > deadline:
        return {"status": "not run", "error": f"not started: --stop-after {args.stop_after:.0f} s had passed"}
    out.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if system.startswith("unsloth"):
        # Unsloth's own pins (trl <= 1.15, datasets < 5) go first for its process only; its compiled code is
        # cached beside its results, not in the repo.
        prefix = [*args.unsloth_pythonpath, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in prefix if p)
        env.setdefault("UNSLOTH_COMPILE_LOCATION", str(out / "unsloth_compiled_cache"))
        env.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--system", system]
    command += ["--setup", str(setup_file), "--system-out", str(out), "--result", str(result_file)]
    log(f"{system} {mode}: starting")
    start = time.perf_counter()
    tail = collections.deque(maxlen=30)
    proc = subprocess.Popen(command + extra, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    RUNNING.add(proc)
    timer = threading.Timer(args.child_timeout, proc.kill)
    timer.start()
    stopped = False
    try:
        with open(out / f"{mode}.log", "w") as log_file:
            for line in proc.stdout:
                log_file.write(line)
                tail.append(line.rstrip())
                print(f"  [{system}] {line}", end="", flush=True)
        proc.wait()
    except Stopped:  # in the main thread: this child is ended below, the caller stops the run
        stopped = True
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        RUNNING.discard(proc)
    seconds = time.perf_counter() - start
    if result_file.is_file():
        result = read_json(result_file)
    elif stopped or STOPPING.is_set():
        result = {"status": "stopped", "error": f"stopped while running, after {seconds:.0f} s"}
    else:
        why = "timed out" if seconds >= args.child_timeout else f"exited {proc.returncode}"
        result = {"status": "failed", "error": f"the process {why} without a result: " + " | ".join(list(tail)[-5:])}
    result["process_seconds"] = seconds
    status = result["status"] if result["status"] != "failed" else f"FAILED: {result['error'][:300]}"
    log(f"{system} {mode}: {status} ({seconds:.0f} s)")
    return result


def evaluate_all(args, systems: dict, deadline: float | None, save) -> None:
    """Every trained adapter through our evaluator, --eval-parallel at a time (accuracy, not speed, is measured
    here); each adapter's tensor names are checked against ours first."""
    ours = systems.get("ours", {}).get("train", {})
    reference = ["--reference-adapter", ours["adapter_dir"]] if ours.get("status") == "ok" else []

    def evaluate(name: str) -> None:
        extra = ["--adapter", systems[name]["train"]["adapter_dir"], "--eval-as", args.eval_as]
        systems[name]["eval"] = run_child(
            args, "eval", name, args.out / name, extra + reference * (name != "ours"), deadline
        )
        save()

    trained = [n for n in args.systems if systems[n]["train"].get("status") == "ok"]
    pool = ThreadPoolExecutor(max_workers=max(args.eval_parallel, 1))
    try:
        pending = [pool.submit(evaluate, name) for name in trained]
        while any(not f.done() for f in pending):  # the main thread stays free for SIGTERM
            time.sleep(0.5)
        for future in pending:
            future.result()
    except Stopped:
        for proc in list(RUNNING):  # the threads read their output to its end, then return
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--gguf", type=Path, help="SmolLM2-135M-Instruct GGUF file (dequantized once)")
    model.add_argument("--tinyllama-arch", type=Path, help="Llama-2 tokenizer.model: random TinyLlama-1.1B arch")
    model.add_argument("--tiny", action="store_true", help="the built-in tiny model (CPU smoke)")
    parser.add_argument("--data", type=Path, help="train.jsonl and test.jsonl (GSM8K); --tiny: synthetic if absent")
    parser.add_argument("--train-rows", type=int, default=None, help="default: all")
    parser.add_argument("--eval-rows", type=int, default=None, help="default: all")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--set", action="append", default=[], help="section.key=value over the recipe")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    parser.add_argument("--no-eval", action="store_true", help="skip evaluating the adapters")
    parser.add_argument(
        "--eval-as",
        choices=("dequantized", "adapter"),
        default="dequantized",
        help="merged into the dequantized NF4 weights (the merge stage's default), or the 4-bit base + adapter",
    )
    parser.add_argument(
        "--eval-parallel", type=int, default=1, help="evaluations at once (not timed: they may share the GPU)"
    )
    parser.add_argument("--unsloth-pythonpath", action="append", default=[], help="prepended for unsloth only")
    parser.add_argument("--reuse", action="store_true", help="keep the base and every finished result in --out")
    parser.add_argument("--stop-after", type=float, default=None, help="seconds: start no new process after")
    parser.add_argument("--child-timeout", type=float, default=3600.0, help="seconds one process may run")
    parser.add_argument("--out", type=Path)
    # Child mode (one process per system): what the parent passes.
    parser.add_argument("--child", choices=("train", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--system-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference-adapter", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    if not args.out:
        parser.error("--out is required")
    if not (args.gguf or args.tinyllama_arch or args.tiny):
        parser.error("name the model: --gguf, --tinyllama-arch or --tiny")
    if not (args.data or args.tiny):
        parser.error("--data is required unless --tiny")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    args.out = args.out.resolve()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        eval_args = {}
        if args.child == "eval":
            eval_args = {"adapter_dir": args.adapter, "reference_dir": args.reference_adapter, "eval_as": args.eval_as}
        sys.exit(child_main(args.child, args.system, args.setup, args.system_out, args.result, **eval_args))

    def stop(signum, frame):
        STOPPING.set()
        raise Stopped(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    deadline = started + args.stop_after if args.stop_after else None
    args.out.mkdir(parents=True, exist_ok=True)
    from qlora_gsm8k.params_file import params_as_dict
    from qlora_gsm8k.rows import read_jsonl, write_jsonl

    data = args.data
    if data is None:
        from qlora_gsm8k.synthetic import write_dataset_dir

        data = write_dataset_dir(args.out / "data", train_rows=args.train_rows or 48, test_rows=args.eval_rows or 16)
    train = read_jsonl(data / "train.jsonl")[: args.train_rows]
    test = read_jsonl(data / "test.jsonl")[: args.eval_rows]
    params, recipe_record = recipe(args, len(train))
    base, model = prepare_base(args, args.out / "work")
    write_jsonl(train, args.out / "train_rows.jsonl")
    write_jsonl(test, args.out / "test_rows.jsonl")
    setup = {
        "params": params_as_dict(params),
        "base_dir": str(base),
        "train_file": str(args.out / "train_rows.jsonl"),
        "test_file": str(args.out / "test_rows.jsonl"),
    }
    from qlora_gsm8k.io import write_json

    write_json(args.out / "setup.json", setup)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": model,
        "data": str(data),
        "train_rows": len(train),
        "eval_rows": 0 if args.no_eval else len(test),
        "recipe": recipe_record,
        "params_train": dataclasses.asdict(params.train),
        "params_lora": dataclasses.asdict(params.lora),
        "params_quant": dataclasses.asdict(params.quant),
        "peft_method": params.peft.method,
        "timing": TIMING,
        "systems": {name: {} for name in args.systems},
    }
    systems = results["systems"]
    try:
        for name in args.systems:
            systems[name]["train"] = run_child(args, "train", name, args.out / name, [], deadline)
            if systems[name]["train"]["status"] == "stopped":
                raise Stopped(systems[name]["train"]["error"])
            write_report(results, args.out)
        if not args.no_eval:
            evaluate_all(args, systems, deadline, lambda: write_report(results, args.out))
    except Stopped as err:
        log(f"stopped ({err}); writing what ran")
        results["stopped"] = str(err)
        for proc in list(RUNNING):
            proc.kill()
    results["seconds"] = time.monotonic() - started
    print(write_report(results, args.out))


if __name__ == "__main__":
    main()
