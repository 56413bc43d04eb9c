"""Training and evaluation speed: a seed-style QLoRA set-up against this project's own training code, on the
same rows, in one invocation; plus generation and perplexity timings.

GPU (TinyLlama-1.1B architecture with random weights, the real Llama-2 tokenizer, real GSM8K rows):
    python bench/bench.py --data .bench/gsm8k --tokenizer .bench/tokenizer.model --rows 2000 --out bench/out
CPU smoke run (tiny-llama, synthetic rows, seconds; tested in CI):
    python bench/bench.py --smoke --out /tmp/bench

Runs compared (same rows, same LoRA settings, same effective batch):
- seed-style: what a typical QLoRA notebook does: every row padded to 512, micro-batch 4 x grad-accum 4,
  fp16, gradient checkpointing, plain HF Trainer.
- ours: `qlora_gsm8k.training.train_adapter` with params.yaml's train settings.
- ablations of ours, one lever changed each: what each lever is worth (the torch.compile ones on GPU only).
- lean: ours with the LEAN preset below (the README's preset for 8-16 GB cards).
With --profile-steps N, N steps of ours run under torch.profiler (not timed): profile.txt says where the time
of a step goes (GPU kernel time against wall time, top operators); profile_compile.txt the same for ours with
torch.compile once its compiled code is cached, when that ablation ran. --skip seed-style,lean leaves those
runs out (ratios are then to ours).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qlora_gsm8k.accelerators import LIGER_KERNELS, LIGER_KERNELS_COMPILED  # noqa: E402
from qlora_gsm8k.config import Params  # noqa: E402
from qlora_gsm8k.evaluation import response_nll
from qlora_gsm8k.generation import generate_answers  # noqa: E402
from qlora_gsm8k.modeling import device, load_model, load_tokenizer, save_base  # noqa: E402
from qlora_gsm8k.params_file import load_params, params_as_dict, parse_params  # noqa: E402
from qlora_gsm8k.peft_methods import lora_config  # noqa: E402
from qlora_gsm8k.prompts import IGNORE_INDEX, encode_examples  # noqa: E402
from qlora_gsm8k.rows import Example, read_jsonl  # noqa: E402
from qlora_gsm8k.synthetic import write_dataset_dir  # noqa: E402
from qlora_gsm8k.tiny import TINY_CHAT_TEMPLATE, build_tiny_llama  # noqa: E402
from qlora_gsm8k.train_config import QuantConfig  # noqa: E402
from qlora_gsm8k.trainer import EncodedDataset  # noqa: E402
from qlora_gsm8k.training import SpeedLevers, train_adapter  # noqa: E402

COMPILE = {"train": {"compile": True}}
# Liger's kernels named as train_adapter picks them, so the runs are ordered by what they patch.
COMPILED = {"changes": COMPILE, "liger_kernel_config": LIGER_KERNELS_COMPILED}
COMPILED_ALL_LIGER = {"changes": COMPILE, "liger_kernel_config": LIGER_KERNELS}
# CUDA graphs replay a step's kernels without their CPU cost, but record one graph per sequence length:
# batches padded to a few lengths (multiples of 64) so the graphs are reused.
COMPILED_CUDA_GRAPHS = {**COMPILED, "compile_mode": "reduce-overhead", "pad_to_multiple_of": 64}
# One graph for the whole forward (embedding to loss) instead of one per decoder layer; with CUDA graphs, the
# whole forward and backward replayed per padded shape.
COMPILED_WHOLE = {**COMPILED, "compile_whole_model": True}
COMPILED_WHOLE_CUDA_GRAPHS = {**COMPILED_CUDA_GRAPHS, "compile_whole_model": True}
# Lean preset for small GPUs: the same batch, activations recomputed in the backward pass instead of kept.
LEAN = {"gradient_checkpointing": True}
# One lever of ours changed per run: what each lever is worth. Keys: params changes by section, peft's fp32
# upcast, Liger kernels left out, cuDNN attention.
ABLATIONS = {
    "ours without Liger kernels": {"changes": {"train": {"liger_kernel": False}}},
    # Liger's fused linear + cross-entropy alone (no RMSNorm, SwiGLU or RoPE kernels): what train.compile keeps.
    "ours, Liger loss kernel only": {"liger_kernel_config": LIGER_KERNELS_COMPILED},
    "ours with cuDNN attention": {"cudnn_attention": True},
    # The per-step overhead levers (issue 17): the HF Trainer's own per-step parameter count for total_flos, and
    # logging (a loss .item() sync, callbacks) every 10 steps instead of every step.
    "ours, parameters recounted every step (HF Trainer default)": {"count_parameters_once": False},
    "ours, logging every 10 steps": {"changes": {"train": {"logging_steps": 10}}},
    # No gradient clipping: no global norm over every LoRA gradient per step (changes training: curves shown).
    "ours, no gradient clipping": {"changes": {"train": {"max_grad_norm": 0.0}}},
    # Token-budget batches (rows × longest row under a budget): as many rows per step as ours on average, and twice.
    "ours, token-budget batches": {"token_budget": 1.0},
    "ours, token-budget batches of twice the tokens (half the steps)": {"token_budget": 2.0},
    # The ceiling of a fused 4-bit dequantize + LoRA kernel: no 4-bit layers at all (LoRA on the 16-bit base).
    "ours on the 16-bit base, no 4-bit layers (a fused 4-bit kernel's ceiling)": {"quantize": False},
    # Ours once more, nothing changed: the run-to-run noise the levers above are measured against.
    "ours, again (run-to-run noise)": {},
    "ours with peft's fp32 upcast": {"upcast_fp32": True},
    "ours, unsorted batches": {"changes": {"train": {"group_by_length": False}}},
    "ours with double quantization": {"changes": {"quant": {"double_quant": True}}},
    # Compiled twice in a row: the first run pays for compiling, the second finds the compiled code cached in
    # the process (as every step after the first few of a long run does).
    "ours with torch.compile": COMPILED,
    "ours with torch.compile (compiled code cached)": COMPILED,
    "ours with torch.compile and CUDA graphs, lengths padded to ×64": COMPILED_CUDA_GRAPHS,
    "ours with torch.compile and CUDA graphs, lengths padded to ×64 (compiled code cached)": COMPILED_CUDA_GRAPHS,
    "ours with torch.compile of the whole model": COMPILED_WHOLE,
    "ours with torch.compile of the whole model (compiled code cached)": COMPILED_WHOLE,
    "ours with torch.compile of the whole model and CUDA graphs, lengths padded to ×64": COMPILED_WHOLE_CUDA_GRAPHS,
    "ours with torch.compile of the whole model and CUDA graphs, lengths padded to ×64 (compiled code cached)": (
        COMPILED_WHOLE_CUDA_GRAPHS
    ),
    "ours with torch.compile and all Liger kernels": COMPILED_ALL_LIGER,
    "ours with torch.compile and all Liger kernels (compiled code cached)": COMPILED_ALL_LIGER,
}
# Ablations that need CUDA (torch.compile of 4-bit layers is refused on CPU).
GPU_ONLY = ("torch.compile",)
SEED_STYLE_PAD_TO = 512

# TinyLlama-1.1B: same FLOPs and memory as the real model, random weights.
TINYLLAMA_ARCH = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def build_tinyllama_arch_base(tokenizer_model: Path, out_dir: Path) -> Path:
    """Random-weight TinyLlama-1.1B with the real SentencePiece tokenizer and the Zephyr chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    with torch.device(device()):
        model = LlamaForCausalLM(LlamaConfig(**TINYLLAMA_ARCH)).to(torch.bfloat16)
    save_base(model, tokenizer, out_dir)
    del model
    return out_dir


class PadToLengthCollator:
    """Seed-style collation: every row padded to a fixed length, padding masked from attention and loss."""

    def __init__(self, pad_token_id: int, length: int):
        self.pad_token_id, self.length = pad_token_id, length

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        def padded(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (self.length - len(values))

        return {
            "input_ids": torch.tensor([padded(r["input_ids"], self.pad_token_id) for r in rows]),
            "labels": torch.tensor([padded(r["labels"], IGNORE_INDEX) for r in rows]),
            "attention_mask": torch.tensor([padded([1] * len(r["input_ids"]), 0) for r in rows]),
        }


def train_seed_style(params: Params, base_dir: Path, examples: list[Example], work: Path) -> dict:
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    on_gpu = device().type == "cuda"
    tokenizer = load_tokenizer(base_dir)
    encoded, _ = encode_examples(tokenizer, examples, SEED_STYLE_PAD_TO)
    compute = "float16" if on_gpu else "float32"
    model = load_model(base_dir, dtype=getattr(torch, compute), quant=QuantConfig(compute_dtype=compute))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, lora_config(params.lora))
    args = TrainingArguments(
        output_dir=str(work / "seed-style"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        learning_rate=params.train.learning_rate,
        num_train_epochs=params.train.epochs,
        lr_scheduler_type=params.train.lr_scheduler,
        warmup_steps=params.train.warmup_ratio,
        logging_steps=1,
        save_strategy="no",
        seed=params.train.seed,
        fp16=on_gpu,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(encoded),
        data_collator=PadToLengthCollator(tokenizer.pad_token_id, SEED_STYLE_PAD_TO),
    )
    _reset_peak()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = sum(len(e.input_ids) for e in encoded) * params.train.epochs
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer, model
    return {"tokens_per_second": tokens / seconds, "seconds": seconds, "peak_gib": _peak(), "losses": losses}


def _loss_recorder_class():
    from transformers import TrainerCallback

    class _LossRecorder(TrainerCallback):
        def __init__(self):
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    return _LossRecorder


def LossRecorder():  # noqa: N802 - builds a TrainerCallback without importing transformers at module load
    return _loss_recorder_class()()


def train_ours(
    params: Params,
    base_dir: Path,
    examples: list[Example],
    work: Path,
    name: str,
    changes: dict | None = None,
    upcast_fp32: bool | None = None,
    liger_kernel_config: dict | None = None,
    cudnn_attention: bool = False,
    extra_callbacks: list | None = None,
    compile_mode: str | None = None,
    pad_to_multiple_of: int = 1,
    count_parameters_once: bool = True,
    compile_whole_model: bool = False,
    quantize: bool = True,
    token_budget: float | None = None,
    record_graphs: bool = True,
    fused_dropout: bool = False,
) -> dict:
    params = _with(params, changes or {})
    slug = "".join(c if c.isalnum() else "-" for c in name)
    _reset_peak()
    metrics = train_adapter(
        params,
        examples,
        base_dir=base_dir,
        adapter_dir=work / f"{slug}-adapter",
        checkpoint_root=work / f"{slug}-checkpoints",
        live_dir=None,
        callbacks=[recorder := LossRecorder(), *(extra_callbacks or [])],
        levers=SpeedLevers(
            upcast_fp32=upcast_fp32,
            liger_kernel_config=liger_kernel_config,
            compile_mode=compile_mode,
            compile_whole_model=compile_whole_model,
            pad_to_multiple_of=pad_to_multiple_of,
            quantize=quantize,
            token_budget=token_budget,
            record_graphs=record_graphs,
            cudnn_attention=cudnn_attention,
            count_parameters_once=count_parameters_once,
            fused_dropout=fused_dropout,
        ),
    )
    return {
        "tokens_per_second": metrics["tokens_per_second"],
        "seconds": metrics["seconds"],
        "peak_gib": _peak(),
        "losses": recorder.losses,
        "liger_kernel": metrics["liger_kernel"],
        "cuda_graphs": metrics["cuda_graphs"],
        "graph_replay_ms": metrics.get("graph_replay_ms"),
        "graph_shapes": metrics.get("graph_shapes"),
        "steps": metrics["steps"],
        "params_train": dataclasses.asdict(params.train),
    }


def _profiler_class():
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        """torch.profiler over optimizer steps [first, first + count): kernel time against wall time."""

        def __init__(self, first: int, count: int):
            self.first, self.count, self.profiler, self.wall = first, count, None, 0.0
            self.done = None  # the finished profiler, once the steps have run

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == self.first and self.profiler is None:
                from torch.profiler import ProfilerActivity, profile

                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.profiler = profile(activities=activities)
                _sync()
                self.profiler.__enter__()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is not None and state.global_step == self.first + self.count:
                _sync()
                self.wall = time.perf_counter() - self.start
                self.profiler.__exit__(None, None, None)
                self.done = self.profiler
                self.profiler = None

    return StepProfiler


def profile_ours(
    params: Params, base_dir: Path, examples: list[Example], work: Path, steps: int, name: str = "ours", **lever
) -> str:
    """Where a training step's time goes: GPU kernel time against wall time, then the top operators."""
    profiler = _profiler_class()(first=3, count=steps)
    rows = examples[: params.train.micro_batch_size * params.train.grad_accum * (steps + 5)]
    train_ours(params, base_dir, rows, work, "profile", extra_callbacks=[profiler], **lever)
    prof = profiler.done
    if prof is None:
        return "profile: too few steps ran\n"
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    kernel_us = kernel_us or sum(getattr(e, "self_device_time_total", 0) for e in events)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    head = (
        f"{steps} optimizer steps of {name} under torch.profiler: wall {profiler.wall * 1e3:.0f} ms "
        f"({profiler.wall * 1e3 / steps:.1f} ms/step), GPU kernel time {kernel_us / 1e3:.0f} ms "
        f"({kernel_us / 1e3 / steps:.1f} ms/step, {kernel_us / 1e6 / profiler.wall:.0%} of wall), "
        f"{launches / steps:.0f} kernel launches/step\n\n"
    )
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return (
        head
        + events.table(sort_by=sort, row_limit=30, max_name_column_width=70)
        + "\n"
        + events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70)
    )


def time_evaluation(
    params: Params, base_dir: Path, test_rows: list[Example], max_new_tokens: int, generation_batch_sizes: list[int]
) -> dict:
    """Perplexity and greedy generation as the evaluation stages run them, one model load; generation once
    per batch size asked for (the first is params.yaml's eval.generation_batch_size)."""
    from qlora_gsm8k.modeling import resolve_dtype

    model = load_model(base_dir, dtype=resolve_dtype(params.eval.dtype))
    tokenizer = load_tokenizer(base_dir, padding_side="left")
    _sync()
    start = time.perf_counter()
    response_nll(model, tokenizer, test_rows, params.eval.batch_size)
    _sync()
    perplexity_seconds = time.perf_counter() - start
    generation = []
    for batch_size in generation_batch_sizes:
        _reset_peak()
        start = time.perf_counter()
        generations = generate_answers(model, tokenizer, [e.question for e in test_rows], batch_size, max_new_tokens)
        _sync()
        generation.append(
            {
                "batch_size": batch_size,
                "seconds": time.perf_counter() - start,
                "generated_tokens": sum(g.new_tokens for g in generations),
                "peak_gib": _peak(),
            }
        )
    return {
        "questions": len(test_rows),
        "max_new_tokens": max_new_tokens,
        "perplexity_batch_size": params.eval.batch_size,
        "perplexity_seconds": perplexity_seconds,
        "generation": generation,
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _with(params: Params, changes: dict[str, dict]) -> Params:
    raw = params_as_dict(params)
    for section, values in changes.items():
        raw[section].update(values)
    return parse_params(raw)


def select_ablations(ablations: dict, spec: str) -> dict:
    """The ablations `spec` names: comma-separated words, each selecting the names that hold it, or only the
    one it equals (so "ours with torch.compile" is that run, not every compiled variant)."""
    words = [w.strip().lower() for w in spec.split(",") if w.strip()]
    names = {name.lower() for name in ablations}
    exact = {w for w in words if w in names}
    contained = [w for w in words if w not in exact]
    return {
        name: lever
        for name, lever in ablations.items()
        if name.lower() in exact or any(w in name.lower() for w in contained)
    }


def table(results: dict) -> str:
    # The ratio is to the seed-style run, or to ours where the seed-style run was skipped.
    reference = "seed-style" if "seed-style" in results["train"] else "ours"
    ref_speed = results["train"].get(reference, {}).get("tokens_per_second")
    lines = [
        f"| run | real tokens/s | seconds | steps | ms/step | peak GPU GiB | × {reference} | mean loss | final loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if results.get("smoke"):
        # A CPU run of a few steps of a tiny model: the ratios are start-up noise, and the GPU levers do nothing.
        ref_speed = None
        lines[:0] = [
            "Smoke test (CPU, tiny-llama, a few steps): it checks that every run works end to end; its speeds and "
            "ratios say nothing about a GPU (ratios left out).",
            "",
        ]
    for name, row in results["train"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:80]} | | | | | | | |")
            continue
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "n/a (CPU)"
        final = f"{row['losses'][-1]:.4f}" if row["losses"] else "n/a"
        # One step's loss is noisy; the mean over the run is what shows two runs learned the same.
        mean = f"{sum(row['losses']) / len(row['losses']):.4f}" if row["losses"] else "n/a"
        ratio = f"{row['tokens_per_second'] / ref_speed:.2f}" if ref_speed else "—"
        # Runs recorded before the step count was kept show none.
        steps = row.get("steps")
        per_step = f"{1000 * row['seconds'] / steps:.0f}" if steps else "—"
        lines.append(
            f"| {name} | {row['tokens_per_second']:,.0f} | {row['seconds']:.1f} | {steps or '—'} | {per_step} | {peak} "
            f"| {ratio} | {mean} | {final} |"
        )
    ev = results.get("eval")
    if not ev:
        return "\n".join(lines)
    lines += [
        "",
        f"Perplexity over {ev['questions']} test questions (batch {ev['perplexity_batch_size']}): "
        f"{ev['perplexity_seconds']:.1f} s.",
    ]
    for gen in ev["generation"]:
        peak = f", peak {gen['peak_gib']:.1f} GiB" if gen["peak_gib"] is not None else ""
        lines.append(
            f"Greedy generation of {ev['questions']} questions, {ev['max_new_tokens']} new tokens max, batch "
            f"{gen['batch_size']}: {gen['seconds']:.1f} s ({gen['generated_tokens']:,} tokens{peak})."
        )
    return "\n".join(lines)


def plot_losses(runs: dict[str, dict], path: Path, names: tuple[str, ...] | None = None) -> bool:
    """Loss curves of `runs` (name -> row with "losses"), those in `names` only when given; x is the share of
    the epoch, so runs at different effective batches (other step counts) line up."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, row in runs.items():
        if "error" in row or not row.get("losses") or (names and name not in names):
            continue
        losses = row["losses"]
        ax.plot([(i + 1) / len(losses) for i in range(len(losses))], losses, label=name, linewidth=1)
    ax.set_xlabel("fraction of training")
    ax.set_ylabel("training loss")
    if ax.lines:  # long run names: the legend goes under the axes, not over the curves
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny-llama and synthetic rows")
    parser.add_argument("--data", type=Path, help="directory with train.jsonl and test.jsonl (GSM8K layout)")
    parser.add_argument("--tokenizer", type=Path, help="Llama-2 tokenizer.model for the TinyLlama-arch model")
    parser.add_argument("--rows", type=int, default=2000, help="training rows")
    parser.add_argument("--eval-rows", type=int, default=1319, help="test questions for the eval timings")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--generation-batch-sizes",
        default="",
        help="comma-separated extra batch sizes to time generation at, after params.yaml's",
    )
    parser.add_argument("--no-ablations", action="store_true", help="skip the one-lever-changed runs of ours")
    parser.add_argument(
        "--ablations", default="", help="comma-separated words: the ablations whose names hold one or equal it"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the perplexity and generation timings")
    parser.add_argument("--no-train", action="store_true", help="only the perplexity and generation timings")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="profile this many steps of ours (and of ours compiled, once its compiled code is cached)",
    )
    parser.add_argument("--skip", default="", help="comma-separated: seed-style, lean (runs to leave out)")
    parser.add_argument(
        "--save-base", type=Path, help="only build the TinyLlama-arch base into this directory and exit"
    )
    parser.add_argument("--out", type=Path, help="directory for results.json, table.md, losses.png")
    parser.add_argument("--render", type=Path, help="only print the table of a results.json written earlier")
    args = parser.parse_args()
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return
    if args.save_base:
        if not args.tokenizer:
            parser.error("--save-base needs --tokenizer")
        build_tinyllama_arch_base(args.tokenizer, args.save_base)
        print(f"TinyLlama-1.1B-arch base with random weights saved to {args.save_base}")
        return
    if not args.out:
        parser.error("--out is required")

    params = load_params(args.params)
    work = Path(tempfile.mkdtemp(prefix="qlora-bench-"))
    atexit.register(shutil.rmtree, work, True)  # a TinyLlama-arch base is 2.2 GB: never left behind
    if args.smoke:
        args.rows, args.eval_rows, args.max_new_tokens = min(args.rows, 48), min(args.eval_rows, 16), 16
        data_dir = write_dataset_dir(work / "data", train_rows=args.rows, test_rows=args.eval_rows)
        model, tokenizer = build_tiny_llama()
        base_dir = work / "base"
        save_base(model, tokenizer, base_dir)
        params = parse_params({**params_as_dict(params), "model": {"name": "tiny-llama"}})
    else:
        if not (args.data and args.tokenizer):
            parser.error("--data and --tokenizer are needed unless --smoke")
        data_dir = args.data
        base_dir = build_tinyllama_arch_base(args.tokenizer, work / "base")
    train_rows = read_jsonl(data_dir / "train.jsonl")[: args.rows]
    test_rows = read_jsonl(data_dir / "test.jsonl")[: args.eval_rows]
    on_gpu = torch.cuda.is_available()
    generation_batch_sizes = [params.eval.generation_batch_size] + [
        int(b) for b in args.generation_batch_sizes.split(",") if b
    ]

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
        "versions": _versions(),
        "rows": len(train_rows),
        "smoke": args.smoke,
        "params_train": dataclasses.asdict(params.train),
        "params_lora": dataclasses.asdict(params.lora),
        "train": {},
    }
    runs = results["train"]
    args.out.mkdir(parents=True, exist_ok=True)

    def record(name: str, run) -> None:
        """One run; a failing one is recorded with its error and the others still run. Results are written
        after every run, so a benchmark stopped at a time limit keeps what it measured."""
        try:
            runs[name] = run()
        except Exception as err:  # noqa: BLE001 - the benchmark reports every failure and goes on
            runs[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{name} failed: {runs[name]['error']}")
        save()

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    skip = {w.strip() for w in args.skip.split(",") if w.strip()}
    if skip - {"seed-style", "lean"}:
        parser.error(f"--skip takes seed-style and lean, not {', '.join(sorted(skip - {'seed-style', 'lean'}))}")
    if on_gpu:
        # Several compiled variants of the same decoder layer in one process: more than dynamo's default of 8
        # cached graphs per function, and it would silently run the rest eagerly.
        torch._dynamo.config.recompile_limit = 64
    if not args.no_train and "seed-style" not in skip:
        record("seed-style", lambda: train_seed_style(params, base_dir, train_rows, work))
    # Liger patches transformers' Llama code for the whole process, and never undoes a patch: runs without
    # Liger go first, then those leaving some of its kernels out, then the rest.
    ablations = {} if args.no_ablations or args.no_train else ABLATIONS
    if not on_gpu:
        ablations = {name: lever for name, lever in ablations.items() if not any(g in name for g in GPU_ONLY)}
    if args.ablations:
        ablations = select_ablations(ablations, args.ablations)

    def liger_use(lever: dict) -> int:
        """0: no Liger, 1: some of its kernels left out, 2: all that ours uses."""
        if lever.get("changes", {}).get("train", {}).get("liger_kernel") is False:
            return 0
        config = lever.get("liger_kernel_config", LIGER_KERNELS)
        return 1 if any(config.get(k) is False for k in ("rms_norm", "swiglu")) else 2

    def ablation(name: str, lever: dict):
        return lambda: train_ours(params, base_dir, train_rows, work, name, **lever)

    for name, lever in sorted(ablations.items(), key=lambda item: liger_use(item[1])):
        if liger_use(lever) < 2:
            record(name, ablation(name, lever))
    # Profiled once its compiled code is cached, and before runs with all of Liger's kernels patch them in.
    cached_compile = runs.get("ours with torch.compile (compiled code cached)", {})
    if args.profile_steps and cached_compile and "error" not in cached_compile:
        profile = profile_ours(params, base_dir, train_rows, work, args.profile_steps, "ours compiled", **COMPILED)
        (args.out / "profile_compile.txt").write_text(profile)
        print(profile.split("\n\n")[0])
    if not args.no_eval:
        results["eval"] = time_evaluation(params, base_dir, test_rows, args.max_new_tokens, generation_batch_sizes)
        save()
    if args.profile_steps:
        # Also compiles Liger's Triton kernels once, as any earlier run on the machine would have.
        profile = profile_ours(params, base_dir, train_rows, work, args.profile_steps)
        (args.out / "profile.txt").write_text(profile)
        print(profile.split("\n\n")[0])
    if not args.no_train:
        record("ours", lambda: train_ours(params, base_dir, train_rows, work, "ours"))
    for name, lever in ablations.items():
        if liger_use(lever) == 2:
            record(name, ablation(name, lever))
    if not args.no_train and "lean" not in skip:
        record("lean", ablation("lean", {"changes": {"train": LEAN}}))

    rendered = table(results)
    (args.out / "table.md").write_text(rendered + "\n")
    # The ablations follow ours closely; the curves that must agree are the slow path's and ours.
    plot_losses(results["train"], args.out / "losses.png", names=("seed-style", "ours", "lean"))
    print(rendered)


def _versions() -> dict:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel", "triton")
    return {n: md.version(n) for n in names if _installed(n)}


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()
