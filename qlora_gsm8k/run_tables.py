"""How a comparison of runs reads: one pair as text, a leaderboard as Markdown (for a PR) and as a PNG (accuracy
with its interval per run). Pure functions of tools/compare_runs.py's results; nothing here reads a run."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes


# --- two runs ------------------------------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{value:.1%}"


def _signed_pct(value: float) -> str:
    return f"{value * 100:+.1f} pts"


def pair_text(result: dict[str, Any], label_a: str, label_b: str) -> str:
    lo, hi = result["ci95"]
    lines = [
        f"{result['set']}, {result['n']} questions: A = {label_a}, B = {label_b}",
        f"  exact match (flexible)  A {_pct(result['accuracy_a'])}  B {_pct(result['accuracy_b'])}  "
        f"difference {_signed_pct(result['accuracy_diff'])} (95% paired bootstrap CI {_signed_pct(lo)} … "
        f"{_signed_pct(hi)})",
        f"  B vs A: {result['wrong_to_right']} wrong→right, {result['right_to_wrong']} right→wrong, "
        f"exact McNemar p = {result['mcnemar_p']:.3g}",
        f"  exact match (strict)    A {_pct(result['accuracy_strict_a'])}  B {_pct(result['accuracy_strict_b'])}  "
        f"{result['strict_wrong_to_right']} wrong→right, {result['strict_right_to_wrong']} right→wrong, "
        f"p = {result['strict_mcnemar_p']:.3g}",
        f"  answers at the token cap  A {_pct(result['hit_cap_a'])}  B {_pct(result['hit_cap_b'])}",
    ]
    if result["params_diff"]:
        lines.append("  params that differ (A → B):")
        lines += [f"    {k}: {json.dumps(v['a'])} → {json.dumps(v['b'])}" for k, v in result["params_diff"].items()]
    else:
        lines.append("  params: the same")
    return "\n".join(lines)


# --- leaderboard ---------------------------------------------------------------------------------------------
def _params_cell(diff: dict[str, dict]) -> str:
    text = ", ".join(f"{k}={json.dumps(v['b'])}" for k, v in diff.items())
    return f"`{text}`" if text else "(same params)"


def leaderboard_markdown(baseline_label: str, ranked: list[dict], skipped: dict[str, str], alpha: float) -> str:
    first = ranked[0]
    title = first["set"]
    lines = [
        f"# {title} leaderboard against {baseline_label}",
        "",
        f"{first['n']} questions; baseline exact match {_pct(first['accuracy_a'])} flexible, "
        f"{_pct(first['accuracy_strict_a'])} strict, {_pct(first['hit_cap_a'])} at the token cap. Each run is paired "
        f"with the baseline question by question: Δ with its 95% paired bootstrap CI, exact McNemar p, and that p "
        f"Holm-corrected over the {len(ranked)} runs; ✓ marks a run better than the baseline at corrected p < {alpha}.",
        "",
        "| rank | run | flexible | strict | Δ vs baseline (95% CI) | wrong→right | right→wrong | McNemar p | Holm p "
        "| better | at cap | params vs baseline |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|:---:|---:|---|",
    ]
    for rank, row in enumerate(ranked, start=1):
        lo, hi = row["ci95"]
        lines.append(
            f"| {rank} | {row['run']} | {_pct(row['accuracy_b'])} | {_pct(row['accuracy_strict_b'])} | "
            f"{_signed_pct(row['accuracy_diff'])} ({_signed_pct(lo)} … {_signed_pct(hi)}) | {row['wrong_to_right']} | "
            f"{row['right_to_wrong']} | {row['mcnemar_p']:.3g} | {row['holm_p']:.3g} | {'✓' if row['better'] else ''} "
            f"| {_pct(row['hit_cap_b'])} | {_params_cell(row['params_diff'])} |"
        )
    if skipped:
        lines += ["", "Left out (cannot be compared with the baseline):", ""]
        lines += [f"- {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"


def leaderboard_png(baseline_label: str, ranked: list[dict], path: Path, alpha: float) -> None:
    """Accuracy per run, best at the top, with the baseline's accuracy plus the paired interval of the difference
    as its bar: a bar that crosses the baseline line is a difference these questions cannot resolve."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot as plt
    from matplotlib.ticker import PercentFormatter

    base = ranked[0]["accuracy_a"]
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.45 * len(ranked)), dpi=110)
    for y, row in enumerate(ranked):
        lo, hi = row["ci95"]
        colour = "#2ca02c" if row["better"] else "#1f77b4"
        ax.errorbar(
            row["accuracy_b"],
            y,
            xerr=[[row["accuracy_b"] - (base + lo)], [(base + hi) - row["accuracy_b"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        ax.annotate(
            f"{_pct(row['accuracy_b'])}, p {row['mcnemar_p']:.2g}",
            (row["accuracy_b"], y),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.axvline(base, color="#8c8c8c", linestyle="--", label=f"baseline {baseline_label}: {_pct(base)}")
    ax.set_yticks(range(len(ranked)), [row["run"] for row in ranked])
    ax.set_ylim(len(ranked) - 0.4, -0.7)  # best at the top, with room for the labels above the points
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("exact match, flexible (bar: baseline + 95% paired bootstrap CI of the difference)")
    ax.set_title(f"{ranked[0]['set']}, {ranked[0]['n']} questions; green: better at Holm p < {alpha}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    # No timestamp in the file: the same numbers give the same bytes.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
