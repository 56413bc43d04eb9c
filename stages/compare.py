"""Compare base and tuned on the same questions of every enabled eval set: table, paired statistics, plots, Markdown
report, and the adapter's model card with these results added (the train stage writes its card before any
evaluation has run). A set that is off is skipped."""

from pathlib import Path

import pandas as pd

from qlora_gsm8k.cards import evaluated_card, evaluation_lines
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.comparison import (
    accuracy_plot_rows,
    flips_plot_rows,
    generations_table,
    set_metrics,
    sft_vs_tuned,
    table_csv,
)
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.eval_rows import read_eval_rows
from qlora_gsm8k.io import atomic_write_text, read_json, write_json
from qlora_gsm8k.peft_methods import check_method
from qlora_gsm8k.plots import accuracy_png, by_type_png, flips_png
from qlora_gsm8k.report import markdown_report, run_context
from qlora_gsm8k.rows import read_json_lines


def compare_set(name: str, args) -> tuple:
    """(generations table, metrics, perplexity by model) of one set, from the files its stages wrote; where RL ran,
    SFT alone (the tuned stage's *_sft files) against SFT + RL as well."""
    directory = Path(args.generations_dir)
    eval_rows = read_eval_rows(Path(args.eval_dir) / f"{name}.jsonl")
    generations = {m: read_json_lines(directory / f"{name}_{m}.jsonl") for m in ("base", "tuned")}
    table = generations_table(eval_rows, **generations, name=name)
    perplexity = {}
    for model in ("base", "tuned", "sft"):
        scored = Path(args.perplexity_dir) / f"{name}_{model}.json"
        if scored.is_file():
            perplexity.update(read_json(scored).get(name, {}))
    metrics = set_metrics(table, perplexity)
    sft = directory / f"{name}_sft.jsonl"
    if sft.is_file() and sft.stat().st_size:
        metrics["sft_vs_tuned"] = sft_vs_tuned(eval_rows, read_json_lines(sft), generations["tuned"])
    return table, metrics, perplexity


@stage_main
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--eval-dir", required=True, help="the sets' slices, <set>.jsonl (fetch_eval)")
    parser.add_argument("--generations-dir", required=True, help="<set>_<model>.jsonl (evaluate)")
    parser.add_argument("--perplexity-dir", required=True, help="<set>_<model>.json (evaluate)")
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--table-out", required=True, help="CSV, one row per question of every set")
    parser.add_argument("--report-out", required=True, help="Markdown side-by-side of flips and a sample")
    parser.add_argument("--plots-dir", required=True)
    parser.add_argument("--adapter-card", required=True, help="the train stage's model card (README.md)")
    parser.add_argument("--card-out", required=True, help="that card with the evaluation added (Markdown)")
    args, params = parse_stage_args(parser, check_method)
    sets = {name: compare_set(name, args) for name in params.enabled_sets()}
    tables = {name: table for name, (table, _, _) in sets.items()}
    write_json(args.metrics_out, {name: metrics for name, (_, metrics, _) in sets.items()})
    atomic_write_text(args.table_out, table_csv(pd.concat(list(tables.values()), ignore_index=True)))
    report = markdown_report(sets, params.eval.report_samples, run_context(params), params.eval.merge_into)
    atomic_write_text(args.report_out, report)
    card = evaluated_card(Path(args.adapter_card).read_text(encoding="utf-8"), evaluation_lines(sets, params))
    atomic_write_text(args.card_out, card)
    plots = Path(args.plots_dir)
    accuracy, flips = accuracy_plot_rows(tables), flips_plot_rows(tables)
    atomic_write_text(plots / "accuracy.csv", accuracy.to_csv(index=False))
    atomic_write_text(plots / "flips.csv", flips.to_csv(index=False))
    accuracy_png(accuracy, plots / "accuracy.png")
    flips_png(flips, plots / "flips.png")
    by_type_png({name: metrics.get("by_type", {}) for name, (_, metrics, _) in sets.items()}, plots / "by_type.png")
    for name, (_, metrics, _) in sets.items():
        paired = metrics["paired"]
        print(
            f"{name}: {paired['flips_wrong_to_right']} wrong→right, {paired['flips_right_to_wrong']} right→wrong, "
            f"McNemar p={paired['mcnemar_p']:.3g}"
        )
        if "sft_vs_tuned" in metrics:
            rl = metrics["sft_vs_tuned"]
            print(
                f"{name}, SFT alone → SFT + RL: {rl['flips_wrong_to_right']} wrong→right, "
                f"{rl['flips_right_to_wrong']} right→wrong, McNemar p={rl['mcnemar_p']:.3g}"
            )


if __name__ == "__main__":
    main()
