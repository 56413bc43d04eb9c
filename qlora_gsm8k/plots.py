"""The pipeline's plots as PNG images: `dvc plots show` embeds them in its HTML page and they open without a
network, unlike the vega plots beside them (which load vega from a CDN)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

_COLOURS = {"base": "#8c8c8c", "tuned": "#1f77b4"}


def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=110)


def _save(plt, fig, path: str | Path) -> None:
    import io

    from .io import atomic_write_bytes

    buffer = io.BytesIO()
    fig.tight_layout()
    # No timestamp in the file: the same numbers give the same bytes, so DVC sees no change.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def accuracy_png(rows: pd.DataFrame, path: str | Path, title: str = "GSM8K exact match, base vs tuned") -> None:
    """Grouped bars from accuracy_plot_rows: one bar per model within each metric, never stacked."""
    plt, fig, ax = _figure()
    metrics = list(dict.fromkeys(rows.metric))
    width = 0.38
    for offset, model in ((-width / 2, "base"), (width / 2, "tuned")):
        values = [float(rows[(rows.model == model) & (rows.metric == m)].value.iloc[0]) for m in metrics]
        bars = ax.bar([i + offset for i in range(len(metrics))], values, width, label=model, color=_COLOURS[model])
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], fontsize=8)
    ax.set_xticks(range(len(metrics)), [m.removeprefix("exact_match_") for m in metrics])
    ax.set_ylabel("share of questions right")
    ax.set_ylim(0, max(0.05, float(rows.value.max()) * 1.25))
    ax.set_title(title)
    ax.legend()
    _save(plt, fig, path)


def flips_png(rows: pd.DataFrame, path: str | Path, title: str = "GSM8K questions, base → tuned") -> None:
    """Horizontal bars from flips_plot_rows: the four outcomes."""
    plt, fig, ax = _figure(height=2.8)
    labels = [o.replace("_", " ") for o in rows.outcome]
    colours = {"wrong_to_right": "#2ca02c", "right_to_wrong": "#d62728"}
    bars = ax.barh(labels, rows.questions, color=[colours.get(o, "#8c8c8c") for o in rows.outcome])
    ax.bar_label(bars, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("questions")
    ax.set_title(title)
    _save(plt, fig, path)


def by_type_png(by_type: dict[str, dict], path: str | Path) -> None:
    """SVAMP accuracy per problem type, base vs tuned (an empty chart saying so when the set is off)."""
    plt, fig, ax = _figure()
    kinds = list(by_type)
    if not kinds:
        ax.text(0.5, 0.5, "SVAMP is off (svamp.enabled: false)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        _save(plt, fig, path)
        return
    width = 0.38
    for offset, model in ((-width / 2, "base"), (width / 2, "tuned")):
        values = [by_type[k][model] for k in kinds]
        bars = ax.bar([i + offset for i in range(len(kinds))], values, width, label=model, color=_COLOURS[model])
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=8)
    ax.set_xticks(range(len(kinds)), [f"{k}\n({by_type[k]['examples']})" for k in kinds], fontsize=8)
    ax.set_ylabel("flexible exact match")
    ax.set_ylim(0, max([0.05] + [by_type[k][m] * 1.25 for k in kinds for m in ("base", "tuned")]))
    ax.set_title("SVAMP by problem type (questions), base vs tuned")
    ax.legend()
    _save(plt, fig, path)


def curve_png(tsv: str | Path, column: str, path: str | Path, title: str) -> None:
    """One DVCLive metric (plots/metrics/<name>.tsv) against step."""
    frame = pd.read_csv(tsv, sep="\t")
    plt, fig, ax = _figure()
    ax.plot(frame["step"], frame[column], color=_COLOURS["tuned"], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)
