"""Greedy answers of one model (base or tuned) to the eval questions, scored GSM8K-style."""

import json

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.evaluation import generate_answers, score_generations
from qlora_gsm8k.gsm8k import read_jsonl
from qlora_gsm8k.io import atomic_write_text, write_json
from qlora_gsm8k.modeling import load_model, load_tokenizer, resolve_dtype


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--label", required=True, choices=["base", "tuned"])
    parser.add_argument("--eval", required=True)
    parser.add_argument("--generations-out", required=True, help="JSONL, one scored output per row")
    parser.add_argument("--metrics-out", required=True)
    args, params = parse_stage_args(parser)
    examples = read_jsonl(args.eval)
    tokenizer = load_tokenizer(args.model, padding_side="left")
    dtype = resolve_dtype(params.eval.dtype)
    model = load_model(args.model, dtype=dtype)
    questions = [e.question for e in examples]
    generations = generate_answers(model, tokenizer, questions, params.eval.batch_size, params.eval.max_new_tokens)
    rows, summary = score_generations(examples, generations)
    summary["precision"] = str(dtype).removeprefix("torch.")
    atomic_write_text(args.generations_out, "".join(json.dumps(r) + "\n" for r in rows))
    write_json(args.metrics_out, {args.label: summary})
    print(
        f"{args.label}: exact match strict {summary['exact_match_strict']:.3f}, "
        f"flexible {summary['exact_match_flexible']:.3f}"
    )


if __name__ == "__main__":
    main()
