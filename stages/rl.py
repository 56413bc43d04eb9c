"""Reinforcement learning after SFT (rl.enabled): GRPO, through TRL's GRPOTrainer, continues the SFT adapter on the
4-bit base with the GSM8K answer as reward (qlora_gsm8k.reinforcement, qlora_gsm8k.rewards); DVCLive curves of the
reward, its terms, the KL and the completions' length. Resumable like the train stage: run `dvc repro` again after an
interruption and it continues from the last complete checkpoint under --checkpoints.

rl.enabled=false (the default): writes a marker in --adapter-out, loads nothing, and merge takes the SFT adapter."""

from pathlib import Path

from qlora_gsm8k import startup
from qlora_gsm8k.cards import RL_RECIPE, write_rl_adapter_card
from qlora_gsm8k.cli import parse_stage_args, stage_parser
from qlora_gsm8k.errors import stage_main
from qlora_gsm8k.io import atomic_directory, write_json
from qlora_gsm8k.params_file import params_as_dict
from qlora_gsm8k.rows import read_jsonl

# What merge reads to tell "RL off" from an RL adapter.
DISABLED_MARKER = "rl_disabled.json"


@stage_main(resumes=True)
def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True, help="the SFT adapter (the train stage's output)")
    parser.add_argument("--train", required=True, help="the train slice, whose questions RL samples from")
    parser.add_argument("--adapter-out", required=True)
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--live-dir", required=True, help="DVCLive log directory")
    parser.add_argument("--checkpoints", required=True, help="kept across interrupted runs, for resume")
    startup.report_at_first_work()
    args, params = parse_stage_args(parser)
    live_dir = Path(args.live_dir)
    if not params.rl.enabled:
        with atomic_directory(args.adapter_out) as tmp:
            write_json(tmp / DISABLED_MARKER, {"rl": "disabled", "merge_takes": args.adapter})
        live_dir.mkdir(parents=True, exist_ok=True)
        write_json(args.metrics_out, {"rl": {"enabled": False}})
        print("rl.enabled is false: no RL; merge takes the SFT adapter")
        return
    # The weights hash and CUDA starts while torch, transformers, peft and TRL import.
    startup.check_weights_alongside(args.base, args.adapter)
    startup.start_cuda_alongside()
    from qlora_gsm8k.checkpoints import discard_finished_runs
    from qlora_gsm8k.plots import curve_png
    from qlora_gsm8k.reinforcement import train_rl

    checkpoints = Path(args.checkpoints)
    with atomic_directory(args.adapter_out) as tmp:
        metrics = train_rl(
            params,
            read_jsonl(args.train),
            base_dir=Path(args.base),
            adapter_dir=Path(args.adapter),
            out_dir=tmp,
            checkpoint_root=checkpoints,
            live_dir=live_dir,
            keep_checkpoints=True,
        )
        write_json(tmp / "training_run.json", {k: metrics.pop(k) for k in ("compute_dtype", "device")})
        recipe = params_as_dict(params)["rl"]
        write_json(tmp / RL_RECIPE, recipe)
        write_rl_adapter_card(tmp, (Path(args.adapter) / "README.md").read_text(encoding="utf-8"), recipe, metrics)
    write_json(args.metrics_out, {"rl": metrics})
    curves = live_dir / "plots"
    for name, title in (("reward", "GRPO reward"), ("rewards_answer_mean", "Sampled accuracy (answer reward)")):
        if (curves / f"metrics/{name}.tsv").is_file():
            curve_png(curves / f"metrics/{name}.tsv", name, curves / f"images/{name}.png", title)
    discard_finished_runs(checkpoints)
    print(
        f"RL: {metrics['steps']} steps; reward {metrics['reward_first']:.3f} -> {metrics['reward_last']:.3f}, "
        f"sampled accuracy {metrics['sampled_accuracy_first']:.3f} -> {metrics['sampled_accuracy_last']:.3f}"
    )


if __name__ == "__main__":
    main()
