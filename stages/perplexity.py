"""Response-token perplexity of one model (base or tuned) on the eval slice."""

from qlora_gsm8k.cli import eval_stage_parser, parse_stage_args
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.evaluation import response_nll
from qlora_gsm8k.gsm8k import read_jsonl
from qlora_gsm8k.io import write_json
from qlora_gsm8k.modeling import load_for_eval


@stage_main
def main() -> None:
    parser = eval_stage_parser(__doc__)
    args, params = parse_stage_args(parser)
    examples = read_jsonl(args.eval)
    model, tokenizer, precision = load_for_eval(args.model, params.eval.dtype)
    result = response_nll(model, tokenizer, examples, params.eval.batch_size)
    result["precision"] = precision
    write_json(args.metrics_out, {args.label: result})
    print(f"{args.label} perplexity {result['perplexity']:.3f} over {result['tokens']} response tokens")


if __name__ == "__main__":
    main()
