"""The speed benchmark's CPU smoke mode: the same script that produces the GPU table runs end to end."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from bench.bench import ABLATIONS, GPU_ONLY
from conftest import REPO_ROOT, run, shipped_params, tool_env, write_params
from tools.stage_deps import stage_script


@pytest.mark.slow
def test_bench_smoke_runs_all_configurations(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**tool_env(), "TMPDIR": str(scratch)}
    command = [sys.executable, "bench/bench.py", "--smoke", "--params", str(write_params(tmp_path / "params.yaml"))]
    result = run([*command, "--out", str(tmp_path)], cwd=REPO_ROOT, env=env)
    assert not list(scratch.glob("qlora-*")), "the bench's work directory is removed"
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["train"]
    assert {"seed-style", "ours", "lean"} <= set(runs)
    cpu_ablations = {name for name in ABLATIONS if not any(g in name for g in GPU_ONLY)}
    assert set(runs) - {"seed-style", "ours", "lean"} == cpu_ablations
    assert cpu_ablations and cpu_ablations != set(ABLATIONS)
    for name, row in runs.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["tokens_per_second"] > 0, name
        # Same rows and effective batch: the same number of optimizer steps, each logged (one in ten at logging 10).
        if row.get("params_train", {}).get("logging_steps") == 10:
            assert len(row["losses"]) == len(runs["ours"]["losses"]) // 10, name
        elif "token-budget" in name:  # as many steps as batches fit the budget, each logged
            assert len(row["losses"]) == row["steps"] > 0, name
        else:
            assert len(row["losses"]) == len(runs["ours"]["losses"]) > 0, name
    # Each ablation ran with its one lever changed and nothing else.
    assert runs["ours, unsorted batches"]["params_train"]["group_by_length"] is False
    assert runs["ours"]["params_train"]["group_by_length"] is True
    assert runs["lean"]["params_train"]["gradient_checkpointing"] is True
    assert runs["ours, no gradient clipping"]["params_train"]["max_grad_norm"] == 0
    assert runs["ours"]["params_train"]["max_grad_norm"] == 1.0
    assert runs["ours"]["liger_kernel"] is False  # auto: no GPU here
    assert runs["ours"]["steps"] == len(runs["ours"]["losses"])
    assert runs["ours, token-budget batches of twice the tokens (half the steps)"]["steps"] < runs["ours"]["steps"]
    assert runs["ours with double quantization"]["params_train"] == runs["ours"]["params_train"]
    assert (
        runs["ours, parameters recounted every step (HF Trainer default)"]["params_train"]
        == runs["ours"]["params_train"]
    )
    assert results["eval"]["questions"] == 16
    assert results["eval"]["generation"][0]["seconds"] > 0
    assert results["eval"]["generation"][0]["batch_size"] == 256  # params.yaml's eval.generation_batch_size
    assert "| seed-style |" in result.stdout and "× seed-style" in result.stdout
    table = (tmp_path / "table.md").read_text()
    # Labelled as what it is, and no CPU ratio dressed up as a speed-up.
    assert table.startswith("Smoke test (CPU, tiny-llama") and "ratios left out" in table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows and all(cells[6] == "—" for cells in rows), rows


@pytest.mark.slow
def test_bench_no_train_times_only_the_evaluation(tmp_path):
    run(
        [sys.executable, "bench/bench.py", "--smoke", "--no-train", "--params", str(write_params(tmp_path / "p.yaml"))]
        + ["--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env=tool_env(),
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train"] == {}
    assert results["eval"]["perplexity_seconds"] > 0 and results["eval"]["generation"]


@pytest.mark.slow
def test_bench_records_a_failing_run_and_goes_on(tmp_path):
    """A run that fails (here liger_kernel=true on a machine without a GPU) is a row with its error; the
    others are still measured and the table is still written."""
    params = shipped_params()
    params["train"]["liger_kernel"] = True
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    command = [sys.executable, "bench/bench.py", "--smoke", "--no-ablations", "--no-eval", "--params", str(params_file)]
    result = run([*command, "--out", str(out)], cwd=REPO_ROOT, env=tool_env())
    runs = json.loads((out / "results.json").read_text())["train"]
    assert "needs a CUDA GPU" in runs["ours"]["error"] and "needs a CUDA GPU" in runs["lean"]["error"]
    assert runs["seed-style"]["tokens_per_second"] > 0
    assert "| ours | failed: UserError: train.liger_kernel is true" in result.stdout


@pytest.mark.slow
def test_time_repro_runs_the_whole_pipeline_and_times_every_stage(tmp_path, tiny_base_dir, dataset_dir):
    """The script behind the recorded `dvc repro` timing: a real repro of the tracked project on a local model
    directory and local data, every stage timed (and profiled), then a no-op repro; `--set` params reach the
    pipeline, and a key the tree lacks is named, not written."""
    command = [sys.executable, "bench/time_repro.py", "--model", str(tiny_base_dir), "--data", str(dataset_dir)]
    command += ["--svamp", str(dataset_dir / "SVAMP.json")]
    command += ["--params", str(write_params(tmp_path / "params.yaml"))]
    command += ["--set", "data.train_size=64", "--set", "eval.no_such_threshold=0.5"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**tool_env(), "TMPDIR": str(scratch)}
    result = run([*command, "--out", str(tmp_path), "--profile"], cwd=REPO_ROOT, env=env)
    assert not list(scratch.glob("qlora-*")), "the project copy is removed"
    timing = json.loads((tmp_path / "repro_timing.json").read_text())
    assert timing["dvc_repro_returncode"] == 0 and timing["noop_returncode"] == 0
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    sets = shipped_params()["eval_sets"]  # what the foreach stages go over (`${eval_sets}`)
    expected = {f"{name}@{key}" for name, stage in stages.items() if "foreach" in stage for key in sets}
    expected |= {name for name, stage in stages.items() if "foreach" not in stage}
    assert set(timing["stage_seconds"]) == expected
    assert all(seconds > 0 for seconds in timing["stage_seconds"].values())
    assert sum(timing["stage_seconds"].values()) <= timing["dvc_repro_seconds"]
    # nothing changed: the second repro runs no stage
    assert timing["noop_repro_seconds"] < timing["dvc_repro_seconds"] / 3
    assert timing["train_metrics"]["steps"] > 0 and timing["train_metrics"]["examples"] == 64
    assert timing["params_set"] == {"data.train_size": 64}
    assert timing["params_not_in_tree"] == ["eval.no_such_threshold"]
    assert "--set eval.no_such_threshold: not in this tree's params.yaml" in result.stdout
    assert "dvc repro:" in result.stdout and "no-op dvc repro:" in result.stdout
    # One cProfile summary per stage process, in the order they ran (stages.evaluate once per set and model).
    profiled = re.findall(r"^== stages\.(\w+)\.\d+: ", (tmp_path / "stage_profiles.txt").read_text(), re.M)
    scripts = [Path(stage_script(stages[name.split("@")[0]])).stem for name in timing["stage_seconds"]]
    assert profiled == scripts


@pytest.mark.slow
def test_multi_gpu_bench_smoke_runs_one_process_against_two(tmp_path):
    """bench/multi_gpu.py through the real train stage: 1 process, 2 at the same effective batch, 2 at the
    same micro-batch (gloo on CPU)."""
    command = [
        sys.executable,
        "bench/multi_gpu.py",
        "--cpu-smoke",
        "--rows",
        "64",
        "--gpus",
        "2",
        "--params",
        str(write_params(tmp_path / "params.yaml")),
        "--out",
        str(tmp_path),
    ]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run(command, cwd=REPO_ROOT, env={**tool_env(), "TMPDIR": str(scratch)}, timeout=600)
    assert not list(scratch.glob("qlora-*")), "the bench's work directory is removed"
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert list(runs) == ["1 GPU", "2 GPUs, same effective batch", "2 GPUs, same micro-batch"]
    for name, row in runs.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["tokens_per_second"] > 0 and row["real_tokens"] == runs["1 GPU"]["real_tokens"], name
    one, same_batch, same_micro = runs.values()
    assert (one["num_processes"], one["effective_batch"]) == (1, 16)
    assert (same_batch["num_processes"], same_batch["micro_batch"], same_batch["effective_batch"]) == (2, 8, 16)
    assert (same_micro["num_processes"], same_micro["effective_batch"]) == (2, 32)
    # Same effective batch, same rows: the same steps and the same losses, within float noise.
    assert len(one["losses"]) == len(same_batch["losses"]) == 4 == 2 * len(same_micro["losses"])
    assert same_batch["losses"] == pytest.approx(one["losses"], abs=1e-3)
    assert (tmp_path / "table.md").read_text().startswith("| run |")


@pytest.mark.slow
def test_cache_link_cost_measures_hardlinks_against_copies(tmp_path):
    """bench/cache_link_cost.py on a 10 MiB file: a hardlinked output is the cache object (read-only, counted once
    on disk); a copied one is a second, writable copy of it."""
    result = run(
        [sys.executable, "bench/cache_link_cost.py", "--size-gib", "0.01", "--out", str(tmp_path)], cwd=REPO_ROOT
    )
    assert "disk GiB" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    size, runs = results["size_bytes"], results["runs"]
    assert list(tmp_path.iterdir()) == [tmp_path / "results.json"], "the scratch repositories are removed"
    hardlink, copy = runs["hardlink"], runs["copy"]
    assert hardlink["workspace_is_the_cache_object"] and not hardlink["workspace_write_bits"]
    assert not copy["workspace_is_the_cache_object"] and copy["workspace_write_bits"]
    assert size <= hardlink["disk_bytes_one_version"] < 1.1 * size
    assert 2 * size <= copy["disk_bytes_one_version"] < 2.2 * size
    assert 2 * size <= hardlink["disk_bytes_two_versions"] < copy["disk_bytes_two_versions"]
    for row in runs.values():
        assert row["repro_seconds"] > 0 and row["checkout_seconds"] > 0


def test_ablations_are_selected_by_word_or_by_their_exact_name():
    from bench.bench import select_ablations

    compiled = select_ablations(ABLATIONS, "ours with torch.compile")
    assert list(compiled) == ["ours with torch.compile"]
    both = select_ablations(ABLATIONS, "ours with torch.compile, token-budget")
    assert set(both) == {
        "ours with torch.compile",
        "ours, token-budget batches",
        "ours, token-budget batches of twice the tokens (half the steps)",
    }
    assert len(select_ablations(ABLATIONS, "whole model")) == 4
