"""bench/peers.py's outputs: peers.json (everything), peers.md (the tables) and peers_loss.png, from the systems'
results; the paired comparison of each system's answers with ours (McNemar, qlora_gsm8k.paired)."""

from __future__ import annotations

import json
from pathlib import Path

from qlora_gsm8k.paired import paired_comparison


def paired_with_ours(results: dict) -> None:
    """Each evaluated system against ours on the same questions (strict and flexible)."""
    systems = results["systems"]
    ours = systems.get("ours", {}).get("eval", {})
    for name, row in systems.items():
        evaluated = row.get("eval", {})
        if name == "ours" or ours.get("status") != "ok" or evaluated.get("status") != "ok":
            continue
        row["paired_vs_ours"] = {
            kind: paired_comparison(ours[f"correct_{kind}"], evaluated[f"correct_{kind}"])
            for kind in ("flexible", "strict")
        }


def _number(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _graphs(settings: dict) -> str:
    """CUDA graphs: on with the recorded shapes and a replay's median GPU time, or off."""
    if not settings.get("cuda_graphs"):
        return _flag(settings.get("cuda_graphs"))
    replay = settings.get("graph_replay_ms")
    shapes = settings.get("graph_shapes")
    return "on" + (f" ({shapes} shapes, replay {replay:.1f} ms)" if replay is not None else " (not recorded)")


def _flag(value) -> str:
    return {True: "on", False: "off", None: "—"}.get(value, str(value))


def table(results: dict) -> str:
    systems = results["systems"]
    ours_speed = systems.get("ours", {}).get("train", {}).get("tokens_per_second")
    model = results["model"]["kind"] + (
        f" ({Path(results['model']['file']).name})" if "file" in results["model"] else ""
    )
    on_cpu = any(r.get("train", {}).get("device") == "cpu" for r in systems.values())
    lines = [
        f"Model: {model}; {results['train_rows']:,} training rows, {results['eval_rows']:,} test "
        f"questions; recipe {results['recipe']['preset']} at {results['params_train']['epochs']:g} epoch(s), "
        f"micro-batch {results['params_train']['micro_batch_size']}, lr {results['params_train']['learning_rate']:g}, "
        f"{results['peft_method']} r {results['params_lora']['r']} / alpha {results['params_lora']['alpha']}.",
        "",
    ]
    if on_cpu:
        lines += ["A CPU run (a few steps): it checks that every system runs end to end; its speeds say nothing "
                  "about a GPU.", ""]  # fmt: skip
    lines += [
        "| system | real tokens/s | × ours | ms/step | steps | peak GiB | final loss | strict | flexible | hit cap "
        "| McNemar p vs ours (flexible / strict) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for name, row in systems.items():
        train, evaluated = row.get("train", {}), row.get("eval", {})
        if train.get("status") != "ok":
            why = train.get("error", "not reached: the run stopped before it")
            failures.append(f"- **{name}** (training, {train.get('status', 'not run')}): {why}")
            lines.append(f"| {name} | {train.get('status', 'not run')} (below) | | | | | | | | | |")
            continue
        if evaluated and evaluated.get("status") != "ok":
            failures.append(f"- **{name}** (evaluation, {evaluated.get('status')}): {evaluated.get('error', '')}")
        speed = train["tokens_per_second"]
        ratio = f"{speed / ours_speed:.2f}" if ours_speed and speed and not on_cpu else "—"
        losses = [x for x in train["losses"] if x is not None]
        paired = row.get("paired_vs_ours")
        p_values = f"{paired['flexible']['mcnemar_p']:.3g} / {paired['strict']['mcnemar_p']:.3g}" if paired else "—"
        lines.append(
            f"| {name} | {_number(speed, ',.0f')} | {ratio} | {_number(train['ms_per_step'], '.0f')} | "
            f"{train['steps']} | {_number(train['peak_gib'], '.2f', 'n/a (CPU)')} | "
            f"{_number(losses[-1] if losses else None, '.4f')} | {_percent(evaluated.get('exact_match_strict'))} | "
            f"{_percent(evaluated.get('exact_match_flexible'))} | {_percent(evaluated.get('hit_token_cap_rate'))} | "
            f"{p_values} |"
        )
    lines += [
        "",
        "What each system used (read from the model and the trainer when its training ended):",
        "",
        "| system | gradient checkpointing | padding-free | CUDA graphs | Liger | double quant "
        "| compute / adapter dtype | attention | rows tokenized as ours | trl |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in systems.items():
        train = row.get("train", {})
        if train.get("status") != "ok":
            continue
        used, settings, check = train["used"], train["settings"], train["row_check"]
        trl = train["versions"].get("trl", "—") if "trl" in settings["trainer"] else "—"
        checkpointing = settings.get("use_gradient_checkpointing") or used.get("model_is_gradient_checkpointing")
        lines.append(
            f"| {name} | {_flag(checkpointing)} | {_flag(settings.get('padding_free_used'))} | "
            f"{_graphs(settings)} | {_flag(settings.get('liger_kernel'))} | {_flag(used.get('double_quant'))} | "
            f"{used.get('compute_dtype')} / {used.get('adapter_dtype')} | {used.get('attn_implementation')} | "
            f"{check['rows_with_our_ids_and_labels']} of {check['rows']} | {trl} |"
        )
    adapters = [
        f"- {n}: {r['eval']['adapter_names']}" for n, r in systems.items() if r.get("eval", {}).get("status") == "ok"
    ]
    if adapters:
        how = {"adapter": "on the 4-bit base", "dequantized": "merged into the dequantized NF4 weights"}
        kinds = {r["eval"]["evaluated_as"] for r in systems.values() if r.get("eval", {}).get("status") == "ok"}
        lines += [
            "",
            f"Adapters evaluated {', '.join(how[k] for k in sorted(kinds))}, by our evaluator:",
            "",
            *adapters,
        ]
    if failures:
        lines += ["", "Failed or not run:", "", *failures]
    if results.get("stopped"):
        lines += ["", f"Stopped before the end ({results['stopped']}): run again with --reuse to finish."]
    return "\n".join(lines)


def write_report(results: dict, out: Path) -> str:
    """peers.json, peers.md and peers_loss.png under out (after every system, so a stopped run keeps its part)."""
    from bench.bench import plot_losses

    paired_with_ours(results)
    (out / "peers.json").write_text(json.dumps(results, indent=1) + "\n")
    rendered = table(results)
    (out / "peers.md").write_text(rendered + "\n")
    curves = {
        n: {"losses": r["train"]["losses"]} for n, r in results["systems"].items() if r.get("train", {}).get("losses")
    }
    plot_losses(curves, out / "peers_loss.png")
    return rendered
