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


def accuracy_png(rows: pd.DataFrame, path: str | Path, title: str = "Exact match, base vs tuned") -> None:
    """Grouped bars from accuracy_plot_rows: one bar per model within each set and metric, never stacked."""
    plt, fig, ax = _figure(width=max(6.4, 1.6 * rows.set.nunique() * 2))
    groups = list(dict.fromkeys(zip(rows.set, rows.metric, strict=True)))
    width = 0.38
    for offset, model in ((-width / 2, "base"), (width / 2, "tuned")):
        chosen = rows[rows.model == model]
        values = [float(chosen[(chosen.set == s) & (chosen.metric == m)].value.iloc[0]) for s, m in groups]
        bars = ax.bar([i + offset for i in range(len(groups))], values, width, label=model, color=_COLOURS[model])
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], fontsize=8)
    ax.set_xticks(range(len(groups)), [f"{s}\n{m.removeprefix('exact_match_')}" for s, m in groups], fontsize=8)
    ax.set_ylabel("share of questions right")
    ax.set_ylim(0, max(0.05, float(rows.value.max()) * 1.25))
    ax.set_title(title)
    ax.legend()
    _save(plt, fig, path)


def flips_png(rows: pd.DataFrame, path: str | Path, title: str = "Questions per set, base → tuned") -> None:
    """Horizontal bars from flips_plot_rows: the four outcomes of each set ('<set>: <outcome>')."""
    plt, fig, ax = _figure(height=max(2.8, 1.2 + 0.3 * len(rows)))
    labels = [o.replace("_", " ") for o in rows.outcome]
    colours = {"wrong_to_right": "#2ca02c", "right_to_wrong": "#d62728"}
    outcomes = [o.rsplit(": ", 1)[-1] for o in rows.outcome]
    bars = ax.barh(labels, rows.questions, color=[colours.get(o, "#8c8c8c") for o in outcomes])
    ax.bar_label(bars, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("questions")
    ax.set_title(title)
    _save(plt, fig, path)


def by_type_png(by_set: dict[str, dict[str, dict]], path: str | Path) -> None:
    """Accuracy per problem type of every set whose rows have types (SVAMP), base vs tuned; an empty chart saying so
    when no enabled set has types."""
    plt, fig, ax = _figure()
    by_type = {f"{name}: {kind}": row for name, types in by_set.items() for kind, row in types.items()}
    kinds = list(by_type)
    if not kinds:
        ax.text(0.5, 0.5, "no enabled eval set has problem types", ha="center", va="center", transform=ax.transAxes)
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
    ax.set_title("Exact match by problem type (questions), base vs tuned")
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
