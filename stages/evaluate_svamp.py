"""Answer the SVAMP slice with one model (base or tuned): the same prompt, greedy generation and scoring as GSM8K.
An empty slice (svamp.enabled false) writes empty outputs and loads no model."""

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_write_text, write_json
from qlora_gsm8k.rows import write_json_lines
from qlora_gsm8k.svamp import read_svamp_slice


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--label", required=True, choices=["base", "tuned"])
    parser.add_argument("--eval", required=True, help="SVAMP slice (JSONL, from fetch_svamp)")
    parser.add_argument("--generations-out", required=True, help="JSONL, one scored output per row")
    parser.add_argument("--metrics-out", required=True, help="exact match and health (JSON)")
    args, params = parse_stage_args(parser)
    examples = [row.example() for row in read_svamp_slice(args.eval)]
    if not examples:
        atomic_write_text(args.generations_out, "")
        write_json(args.metrics_out, {"svamp": {args.label: {"examples": 0}}})
        print("SVAMP is off: nothing to evaluate")
        return
    from qlora_gsm8k.generation import answer_and_score  # torch: only when there is something to answer
    from qlora_gsm8k.modeling import load_for_eval

    model, tokenizer, _ = load_for_eval(args.model, params.eval.dtype)
    rows, summary = answer_and_score(model, tokenizer, examples, params)
    write_json_lines(args.generations_out, rows)
    write_json(args.metrics_out, {"svamp": {args.label: summary}})
    print(
        f"SVAMP {args.label}: exact match strict {summary['exact_match_strict']:.3f}, "
        f"flexible {summary['exact_match_flexible']:.3f} over {len(rows)} questions"
    )


if __name__ == "__main__":
    main()
