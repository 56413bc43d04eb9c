"""Evaluate one model (base or tuned) on one eval set's slice with one load: greedy answers scored against each
row's reference number, and, for sets whose rows carry worked solutions (GSM8K), response-token perplexity first.
The base's run also scores the base quantized to 4-bit, what training starts from, so quantization's cost and
training's gain read apart. A set that is off (empty slice) writes empty outputs and loads no model."""

from pathlib import Path

from qlora_gsm8k import startup
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.eval_rows import read_eval_rows, solution_examples
from qlora_gsm8k.io import atomic_write_text, write_json
from qlora_gsm8k.rows import write_json_lines


def write_outputs(args, rows: list[dict], summary: dict, perplexity: dict, info: dict) -> None:
    """All outputs once every measurement is done: a stage that fails or is killed while generating leaves no
    perplexity file that looks like this run's next to the last run's generation metrics."""
    write_json_lines(args.generations_out, rows)
    write_json(args.perplexity_out, {args.set: perplexity})
    write_json(args.metrics_out, {args.set: {args.label: summary}})
    # Settings, not numbers: kept out of the metrics files so `dvc metrics diff` compares numbers only.
    write_json(args.info_out, info)


def write_sft_outputs(args, result: tuple | None) -> None:
    """The SFT-alone outputs, empty when there is nothing to write (no RL, or a set that is off)."""
    if not args.sft_generations_out:
        return
    rows, summary, perplexity = result or ([], {}, {})
    write_json_lines(args.sft_generations_out, rows)
    write_json(args.sft_metrics_out, {args.set: {"sft": summary}} if summary else {})
    write_json(args.sft_perplexity_out, {args.set: perplexity} if perplexity else {})


def evaluate_sft(args, params, eval_rows) -> tuple | None:
    """SFT alone on the same rows, where the merge stage saved it (RL ran); None where it did not."""
    if not args.sft_model or not (Path(args.sft_model) / "config.json").is_file():
        return None
    from qlora_gsm8k.evaluation import evaluate_model
    from qlora_gsm8k.modeling import load_for_eval

    model, tokenizer, _ = load_for_eval(args.sft_model, params.eval.dtype)
    perplexity, rows, summary = evaluate_model(
        model, tokenizer, eval_rows, solution_examples(eval_rows), params, "sft", args.sft_model
    )
    print(
        f"{args.set} sft: exact match strict {summary['exact_match_strict']:.3f}, flexible "
        f"{summary['exact_match_flexible']:.3f} over {len(rows)} questions (SFT alone, beside SFT + RL)"
    )
    return rows, summary, perplexity


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--set", required=True, help="the set's name in eval_sets")
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--label", required=True, choices=["base", "tuned"])
    parser.add_argument("--eval", required=True, help="the set's slice (JSONL, from fetch_eval)")
    parser.add_argument("--generations-out", required=True, help="JSONL, one scored output per row")
    parser.add_argument("--metrics-out", required=True, help="exact match and health (JSON)")
    parser.add_argument("--perplexity-out", required=True, help="perplexity metrics, empty for sets without solutions")
    parser.add_argument("--info-out", required=True, help="how the model was run: precision, device (JSON)")
    sft_args = parser.add_argument_group("SFT alone, beside SFT + RL (the tuned side, when the rl stage trained)")
    sft_args.add_argument("--sft-model", help="the SFT adapter merged alone; absent when RL did not run")
    sft_args.add_argument("--sft-generations-out", help="JSONL, its scored outputs (empty without RL)")
    sft_args.add_argument("--sft-metrics-out", help="its exact match and health (JSON, empty without RL)")
    sft_args.add_argument("--sft-perplexity-out", help="its perplexity (JSON, empty without RL)")
    startup.report_at_first_work()
    args, params = parse_stage_args(parser)
    eval_rows = read_eval_rows(args.eval)
    if not eval_rows:
        atomic_write_text(args.generations_out, "")
        write_outputs(args, [], {"examples": 0}, {}, {"model": None})
        write_sft_outputs(args, None)
        print(f"{args.set} is off: nothing to evaluate, no model loaded")
        return
    # The weights hash and CUDA starts while torch and the model code import: only when there is something to answer.
    startup.check_weights_alongside(args.model, Path(args.model) / "adapter")
    startup.start_cuda_alongside()
    from qlora_gsm8k.evaluation import evaluate_model
    from qlora_gsm8k.modeling import load_for_eval

    model, tokenizer, precision = load_for_eval(args.model, params.eval.dtype)
    # Each (set, model) is a stage of its own: what its start-up costs shows here, per stage.
    startup.first_work()
    info = {"model": args.model, "precision": precision, "device": str(model.device)}
    perplexity, rows, summary = evaluate_model(
        model, tokenizer, eval_rows, solution_examples(eval_rows), params, args.label, args.model
    )
    if "base_4bit" in perplexity:
        quant = params.quant
        info["base_4bit"] = {"quant_type": quant.quant_type, "double_quant": quant.double_quant, "dtype": precision}
    sft = None
    if args.sft_generations_out:
        del model  # one model in memory at a time
        sft = evaluate_sft(args, params, eval_rows)
    write_outputs(args, rows, summary, perplexity, info)
    write_sft_outputs(args, sft)
    print(
        f"{args.set} {args.label}: exact match strict {summary['exact_match_strict']:.3f}, "
        f"flexible {summary['exact_match_flexible']:.3f} over {len(rows)} questions"
    )


if __name__ == "__main__":
    main()
