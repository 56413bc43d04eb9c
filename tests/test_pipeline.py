"""The pipeline's shape: dvc.yaml declares exactly what each stage script uses, the repo holds no data or
weights, and one tiny end-to-end `dvc repro` leaves artifacts that load the way users load them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT, run, tool_env
from tools.stage_deps import package_files_used, stage_script

SETS = ("gsm8k", "svamp")
MODELS = ("base", "tuned")


@pytest.mark.slow
def test_every_set_writes_the_same_metric_keys_nested_the_same_way(reproduced_project):
    """One layout for every eval set: metrics/eval/<set>_<model>.json is {set: {model: {…}}} with the same keys."""
    keys = {}
    for name in SETS:
        for model in MODELS:
            (only,) = json.loads((reproduced_project / f"metrics/eval/{name}_{model}.json").read_text()).items()
            assert only[0] == name and list(only[1]) == [model]
            keys[name, model] = set(only[1][model])
    assert len(set(map(frozenset, keys.values()))) == 1, keys
    assert {"exact_match_strict", "exact_match_flexible", "examples"} <= keys["svamp", "tuned"]


def pipeline_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(pipeline_stages()))
def test_stage_deps_are_exactly_the_code_it_uses(name):
    stage = pipeline_stages()[name]
    script = stage_script(stage)
    declared = {d for d in stage.get("do", stage)["deps"] if d.endswith(".py")}
    expected = {script} | package_files_used(REPO_ROOT / script)
    assert declared == expected, (
        f"stage {name}: missing {expected - declared}, extra {declared - expected}; run python tools/stage_deps.py"
    )


def test_every_stage_script_is_in_the_pipeline():
    used = {stage_script(s) for s in pipeline_stages().values()}
    scripts = {f"stages/{p.name}" for p in (REPO_ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert scripts == used


def test_no_data_or_weights_tracked_by_git():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.splitlines()
    heavy = [f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".model", ".jsonl", ".parquet"))]
    assert heavy == []
    big = [f for f in files if (REPO_ROOT / f).is_file() and (REPO_ROOT / f).stat().st_size > 512 * 1024]
    assert big == []


def _only_numbers(tree) -> bool:
    if isinstance(tree, dict):
        return all(_only_numbers(v) for v in tree.values())
    return isinstance(tree, (int, float))


@pytest.mark.slow
def test_repro_outputs_load_as_users_load_them(reproduced_project):
    project = reproduced_project
    for path in ("data/train.jsonl", "data/eval/gsm8k.jsonl", "models/base", "models/adapter", "models/merged"):
        assert (project / path).exists(), path
    metric_files = sorted(str(p.relative_to(project / "metrics")) for p in (project / "metrics").rglob("*.json"))
    per_set = [f"{kind}/{name}_{model}.json" for kind in ("eval", "perplexity") for name in SETS for model in MODELS]
    # *_sft: SFT alone beside SFT + RL, empty files while RL is off (as here); rl.json says it is off.
    sft = [f"{kind}/{name}_sft.json" for kind in ("eval", "perplexity") for name in SETS]
    assert metric_files == sorted(["compare.json", "merge.json", "train.json", "rl.json", *per_set, *sft])
    assert (project / "models/merged/model.safetensors").is_file()
    assert (project / "models/adapter/adapter_model.safetensors").is_file()
    assert (project / "models/merged/chat_template.jinja").is_file() or "chat_template" in (
        project / "models/merged/tokenizer_config.json"
    ).read_text()
    # Model cards that say what the weights are, not peft's blank template
    adapter_card = (project / "models/adapter/README.md").read_text()
    assert "[More Information Needed]" not in adapter_card
    assert "Base model: `tiny-llama`" in adapter_card and "LoRA: r 8, alpha 16" in adapter_card
    assert 'AutoPeftModelForCausalLM.from_pretrained("models/adapter")' in adapter_card
    assert "| train_loss |" in adapter_card
    trained_in = json.loads((project / "models/adapter/training_run.json").read_text())["compute_dtype"]
    assert f"compute dtype {trained_in} (quant.compute_dtype: auto)" in adapter_card
    merged_card = (project / "models/merged/README.md").read_text()
    assert "merged into the base's dequantized weights" in merged_card
    assert "| top1_agreement_merged_vs_4bit_adapter |" in merged_card
    # The evaluation, run after both cards were written, in the card the compare stage writes: the adapter's card
    # with the numbers of metrics/ added.
    evaluated = (project / "reports/model_card.md").read_text()
    assert evaluated.startswith(adapter_card.split("## Load")[0])
    tuned = json.loads((project / "metrics/eval/gsm8k_tuned.json").read_text())["gsm8k"]["tuned"]
    assert f"| {tuned['exact_match_strict']:.3f} |\n" in evaluated.split("gsm8k exact match, strict-match |")[1]
    # Load exactly as the README tells users to, from the repo root, offline, in a fresh interpreter.
    code = (
        "from peft import AutoPeftModelForCausalLM; from transformers import AutoModelForCausalLM;"
        "a = AutoPeftModelForCausalLM.from_pretrained('models/adapter');"
        "m = AutoModelForCausalLM.from_pretrained('models/merged');"
        "print(type(a).__name__, type(m).__name__)"
    )
    result = run([sys.executable, "-c", code], cwd=project, env=tool_env())
    assert "PeftModelForCausalLM LlamaForCausalLM" in result.stdout
    source = json.loads((project / "data/source.json").read_text())
    assert source["kind"] == "local" and source["train_rows"] == 48
    gsm8k_source = json.loads((project / "data/eval_source/gsm8k.json").read_text())
    assert gsm8k_source["rows"] == 12 and gsm8k_source["eval_rows_in_train"] == 0
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    per_set = {f"{stage}@{name}" for stage in ("fetch_eval", "evaluate_base", "evaluate_tuned") for name in SETS}
    assert set(lock["stages"]) == {"check_params", "fetch", "base", "train", "rl", "merge", "compare"} | per_set
    # Numbers only in metrics files (settings sit in data/evaluated_*.json, models/adapter/training_run.json).
    for metrics_file in (project / "metrics").glob("*.json"):
        assert _only_numbers(json.loads(metrics_file.read_text())), metrics_file.name
    # DVC's captured log: progress lines from training and evaluation, no bar frames ('  0%|…|'; read in text
    # mode, their carriage returns are newlines by now).
    log = (project / ".repro-output.txt").read_text()
    assert "%|" not in log
    assert all(f"{what}: 100% (" in log for what in ("train", "perplexity", "generate")), log[-3000:]
    compared = json.loads((project / "metrics/compare.json").read_text())
    svamp = compared["svamp"]
    assert svamp["paired"]["examples"] == 8 and sum(t["examples"] for t in svamp["by_type"].values()) == 8
    assert compared["gsm8k"]["paired"]["examples"] == 12 and "by_type" not in compared["gsm8k"]
    report = (project / "reports/comparison.md").read_text()
    assert "## gsm8k" in report and "## svamp" in report and "| Addition |" in report
    for image in ("reports/plots/accuracy.png", "reports/plots/flips.png", "reports/plots/by_type.png",
                  "dvclive/train/plots/images/loss.png"):  # fmt: skip
        assert (project / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image


@pytest.mark.slow
def test_base_in_4bit_sits_beside_base_and_tuned(reproduced_project):
    """The base quantized as training sees it, scored on the same response tokens: its own perplexity, the two
    deltas it splits the change into, and the report's table. NF4 rounding moves the tiny model's perplexity by
    ~1e-3 relative; two float32 computations of one model agree to ~1e-7."""
    project = reproduced_project
    scores = json.loads((project / "metrics/perplexity/gsm8k_base.json").read_text())["gsm8k"]
    base, quantized = scores["base"], scores["base_4bit"]
    assert math.isfinite(quantized["perplexity"]) and quantized["tokens"] == base["tokens"] > 0
    assert quantized["perplexity"] != pytest.approx(base["perplexity"], rel=1e-4)
    tuned = json.loads((project / "metrics/perplexity/gsm8k_tuned.json").read_text())["gsm8k"]["tuned"]
    delta = json.loads((project / "metrics/compare.json").read_text())["gsm8k"]["delta"]
    assert delta["quantization_perplexity"] == pytest.approx(quantized["perplexity"] - base["perplexity"])
    assert delta["training_perplexity"] == pytest.approx(tuned["perplexity"] - quantized["perplexity"])
    report = (project / "reports/comparison.md").read_text()
    assert f"| base in 4-bit (training starts here) | {quantized['perplexity']:.3f} |" in report


@pytest.mark.slow
def test_the_readmes_baseline_commit_leaves_git_status_clean(reproduced_project):
    """After the first `dvc repro`, the README's `git add … && git commit` commits every file the run wrote that git
    should hold, and DVC's .gitignore files hold every file it should not: `git status` shows nothing."""
    assert (reproduced_project / ".status-after-baseline.txt").read_text() == ""
