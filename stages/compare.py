"""Compare base and tuned on the same questions (GSM8K, and SVAMP when on): table, paired statistics, plots,
Markdown report, and the adapter's model card with these results added (the train stage writes its card before
any evaluation has run)."""

from pathlib import Path

from qlora_gsm8k.cards import evaluated_card, evaluation_lines
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_write_text, read_json, write_json
from qlora_gsm8k.peft_methods import check_method
from qlora_gsm8k.plots import accuracy_png, by_type_png, flips_png
from qlora_gsm8k.report import (
    accuracy_plot_rows,
    compare_metrics,
    flips_plot_rows,
    generations_table,
    markdown_report,
    run_context,
    svamp_metrics,
    table_csv,
)
from qlora_gsm8k.rows import read_json_lines, read_jsonl
from qlora_gsm8k.svamp import read_svamp_slice


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
    parser.add_argument("--svamp", required=True, help="SVAMP slice (JSONL; empty when the set is off)")
    parser.add_argument("--svamp-base-generations", required=True)
    parser.add_argument("--svamp-tuned-generations", required=True)
    parser.add_argument("--svamp-metrics-out", required=True)
    parser.add_argument("--adapter-card", required=True, help="the train stage's model card (README.md)")
    parser.add_argument("--card-out", required=True, help="that card with the evaluation added (Markdown)")
    args, params = parse_stage_args(parser, check_method)
    table = generations_table(
        read_jsonl(args.eval), read_json_lines(args.base_generations), read_json_lines(args.tuned_generations)
    )
    perplexity = {**read_json(args.base_perplexity), **read_json(args.tuned_perplexity)}
    metrics = compare_metrics(table, perplexity)
    svamp = svamp_metrics(
        read_svamp_slice(args.svamp),
        read_json_lines(args.svamp_base_generations),
        read_json_lines(args.svamp_tuned_generations),
    )
    write_json(args.metrics_out, metrics)
    write_json(args.svamp_metrics_out, svamp)
    atomic_write_text(args.table_out, table_csv(table))
    report = markdown_report(
        table,
        metrics,
        params.eval.report_samples,
        svamp,
        perplexity=perplexity,
        context=run_context(params),
        merge_into=params.eval.merge_into,
    )
    atomic_write_text(args.report_out, report)
    evaluation = evaluation_lines(table, perplexity, metrics["paired"], svamp, params)
    atomic_write_text(args.card_out, evaluated_card(Path(args.adapter_card).read_text(encoding="utf-8"), evaluation))
    plots = Path(args.plots_dir)
    accuracy, flips = accuracy_plot_rows(table), flips_plot_rows(table)
    atomic_write_text(plots / "accuracy.csv", accuracy.to_csv(index=False))
    atomic_write_text(plots / "flips.csv", flips.to_csv(index=False))
    accuracy_png(accuracy, plots / "accuracy.png")
    flips_png(flips, plots / "flips.png")
    by_type_png(svamp["svamp"].get("by_type", {}), plots / "svamp_by_type.png")
    paired = metrics["paired"]
    print(
        f"{paired['flips_wrong_to_right']} wrong→right, {paired['flips_right_to_wrong']} right→wrong, "
        f"McNemar p={paired['mcnemar_p']:.3g}"
    )
    if svamp["svamp"]["paired"]["examples"]:
        on_svamp = svamp["svamp"]["paired"]
        print(
            f"SVAMP: {on_svamp['flips_wrong_to_right']} wrong→right, {on_svamp['flips_right_to_wrong']} right→wrong, "
            f"McNemar p={on_svamp['mcnemar_p']:.3g}"
        )


if __name__ == "__main__":
    main()
