"""Greedy answers of one model (base or tuned) to the eval questions, scored GSM8K-style."""

import json

from qlora_gsm8k.cli import eval_stage_parser, parse_stage_args
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.evaluation import generate_answers, score_generations
from qlora_gsm8k.gsm8k import read_jsonl
from qlora_gsm8k.io import atomic_write_text, write_json
from qlora_gsm8k.modeling import load_for_eval


@stage_main
def main() -> None:
    parser = eval_stage_parser(__doc__)
    parser.add_argument("--generations-out", required=True, help="JSONL, one scored output per row")
    args, params = parse_stage_args(parser)
    examples = read_jsonl(args.eval)
    model, tokenizer, precision = load_for_eval(args.model, params.eval.dtype)
    questions = [e.question for e in examples]
    generations = generate_answers(
        model, tokenizer, questions, params.eval.generation_batch_size, params.eval.max_new_tokens
    )
    rows, summary = score_generations(examples, generations)
    summary["precision"] = precision
    atomic_write_text(args.generations_out, "".join(json.dumps(r) + "\n" for r in rows))
    write_json(args.metrics_out, {args.label: summary})
    print(
        f"{args.label}: exact match strict {summary['exact_match_strict']:.3f}, "
        f"flexible {summary['exact_match_flexible']:.3f}"
    )


if __name__ == "__main__":
    main()
