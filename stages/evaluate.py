"""Evaluate one model (base or tuned) on the eval slice with one load: response-token perplexity, then greedy
answers scored GSM8K-style. One stage, not two: each stage is a process that imports torch and loads the
model, which on an H200 took longer than the perplexity itself (bench/RESULTS.md). The base's run also scores
the base quantized to 4-bit, what training starts from, so quantization's cost and training's gain read apart."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.evaluation import evaluate_model, response_nll
from qlora_gsm8k.io import write_json
from qlora_gsm8k.modeling import dequantize_base_into, load_for_eval
from qlora_gsm8k.prompts import ChatFormat
from qlora_gsm8k.rows import read_jsonl, write_json_lines


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--label", required=True, choices=["base", "tuned"])
    parser.add_argument("--eval", required=True, help="eval slice (JSONL)")
    parser.add_argument("--perplexity-out", required=True, help="perplexity metrics (JSON)")
    parser.add_argument("--generations-out", required=True, help="JSONL, one scored output per row")
    parser.add_argument("--generation-metrics-out", required=True, help="exact match and health (JSON)")
    parser.add_argument("--info-out", required=True, help="how the model was run: precision, device (JSON)")
    args, params = parse_stage_args(parser)
    examples = read_jsonl(args.eval)
    model, tokenizer, precision = load_for_eval(args.model, params.eval.dtype)

    perplexity, rows, summary = evaluate_model(model, tokenizer, examples, params)
    print(f"{args.label} perplexity {perplexity['perplexity']:.3f} over {perplexity['tokens']} response tokens")
    scores = {args.label: perplexity}
    info = {"model": args.model, "precision": precision, "device": str(model.device)}
    if args.label == "base":
        # The base in 4-bit as the dequantized NF4 (quant.quant_type, quant.double_quant) weights in eval.dtype, not
        # bitsandbytes' 4-bit forward pass: these are exactly the weights the tuned model is merged into, run in the
        # same dtype and kernels as both other models. So 4-bit minus 16-bit base is the weights' rounding alone, and
        # tuned minus 4-bit base the adapter alone; bitsandbytes computes with the same weights, but in
        # quant.compute_dtype and, on some CPUs, a bf16 kernel (docs/testing.md), which would leak into both
        # differences.
        # Here, not in a stage of its own: one more load in this process, where a stage would add its start-up (the
        # larger part, measured); the price is that a quant.quant_type/double_quant change re-runs base generation.
        dequantize_base_into(model, args.model, params.quant)
        chat = ChatFormat.of(tokenizer, params.prompt.system)
        scores["base_4bit"] = response_nll(model, tokenizer, examples, params.eval.batch_size, chat=chat)
        print(f"base in 4-bit perplexity {scores['base_4bit']['perplexity']:.3f}")
        quant = params.quant
        info["base_4bit"] = {"quant_type": quant.quant_type, "double_quant": quant.double_quant, "dtype": precision}
    # All three outputs once both measurements are done: a stage that fails or is killed while generating leaves
    # no perplexity file that looks like this run's next to the last run's generation metrics.
    write_json_lines(args.generations_out, rows)
    write_json(args.perplexity_out, scores)
    write_json(args.generation_metrics_out, {args.label: summary})
    # Settings, not numbers: kept out of the metrics files so `dvc metrics diff` compares numbers only.
    write_json(args.info_out, info)
    print(
        f"{args.label}: exact match strict {summary['exact_match_strict']:.3f}, "
        f"flexible {summary['exact_match_flexible']:.3f}"
    )


if __name__ == "__main__":
    main()
