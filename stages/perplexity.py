"""Response-token perplexity of one model (base or tuned) on the eval slice."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.evaluation import response_nll
from qlora_gsm8k.gsm8k import read_jsonl
from qlora_gsm8k.io import write_json
from qlora_gsm8k.modeling import load_model, load_tokenizer, resolve_dtype


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--label", required=True, choices=["base", "tuned"])
    parser.add_argument("--eval", required=True)
    parser.add_argument("--metrics-out", required=True)
    args, params = parse_stage_args(parser)
    examples = read_jsonl(args.eval)
    tokenizer = load_tokenizer(args.model)
    dtype = resolve_dtype(params.eval.dtype)
    model = load_model(args.model, dtype=dtype)
    result = response_nll(model, tokenizer, examples, params.eval.batch_size)
    result["precision"] = str(dtype).removeprefix("torch.")
    write_json(args.metrics_out, {args.label: result})
    print(f"{args.label} perplexity {result['perplexity']:.3f} over {result['tokens']} response tokens")


if __name__ == "__main__":
    main()
