"""Compare base and tuned on the same questions: table, paired statistics, plots, Markdown report."""

from pathlib import Path

from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.gsm8k import read_jsonl
from qlora_gsm8k.io import atomic_write_text, read_json, write_json
from qlora_gsm8k.report import (
    accuracy_plot_rows,
    compare_metrics,
    flips_plot_rows,
    generations_table,
    markdown_report,
    read_generations,
)


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--base-generations", required=True)
    parser.add_argument("--tuned-generations", required=True)
    parser.add_argument("--base-perplexity", required=True)
    parser.add_argument("--tuned-perplexity", required=True)
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--table-out", required=True, help="CSV, one row per eval question")
    parser.add_argument("--report-out", required=True, help="Markdown side-by-side of flips and a sample")
    parser.add_argument("--plots-dir", required=True)
    args, params = parse_stage_args(parser)
    table = generations_table(
        read_jsonl(args.eval), read_generations(args.base_generations), read_generations(args.tuned_generations)
    )
    perplexity = {**read_json(args.base_perplexity), **read_json(args.tuned_perplexity)}
    metrics = compare_metrics(table, perplexity)
    write_json(args.metrics_out, metrics)
    atomic_write_text(args.table_out, table.to_csv(index=False))
    atomic_write_text(args.report_out, markdown_report(table, metrics, params.eval.report_samples))
    plots = Path(args.plots_dir)
    atomic_write_text(plots / "accuracy.csv", accuracy_plot_rows(table).to_csv(index=False))
    atomic_write_text(plots / "flips.csv", flips_plot_rows(table).to_csv(index=False))
    paired = metrics["paired"]
    print(
        f"{paired['flips_wrong_to_right']} wrong→right, {paired['flips_right_to_wrong']} right→wrong, "
        f"McNemar p={paired['mcnemar_p']:.3g}"
    )


if __name__ == "__main__":
    main()
