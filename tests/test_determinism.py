"""Determinism: the same params and seed give the same results.

Two independent projects, each with its own `dvc repro` of the tiny pipeline on CPU, must agree on every
metrics file except its timing keys, and on every output DVC records (adapter, merged model, generations,
report), byte for byte. What varies on a GPU is documented in docs/troubleshooting.md."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import dvc, make_project

# Wall-clock measurements: the only values allowed to differ between two runs.
TIMING_KEYS = {"seconds", "tokens_per_second"}


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _timing_keys(value) -> set[str]:
    if isinstance(value, dict):
        found = {k for k in value if k in TIMING_KEYS}
        for v in value.values():
            found |= _timing_keys(v)
        return found
    return set()


def _recorded_outputs(project) -> dict[str, str]:
    """Every output's hash in dvc.lock, the metrics files (which hold timings) left out."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    hashes = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if not out["path"].startswith("metrics/"):
                hashes[out["path"]] = out["md5"]
    return hashes


def _metric_files(project) -> list[str]:
    """Every metrics file, per-set subdirectories included, relative to metrics/."""
    return sorted(str(p.relative_to(project / "metrics")) for p in (project / "metrics").rglob("*.json"))


def test_timing_keys_are_the_only_ones_ignored():
    metrics = {"train_loss": 1.5, "seconds": 3.2, "nested": {"tokens_per_second": 10.0, "steps": 4}}
    assert _without_timing(metrics) == {"train_loss": 1.5, "nested": {"steps": 4}}


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, dataset_dir):
    """A second, independent project with the same params, reproduced from scratch."""
    project = make_project(tmp_path_factory.mktemp("second-run"), dataset_dir)
    dvc(project, "repro")
    return project


@pytest.mark.slow
def test_two_runs_give_identical_metrics_except_timing(reproduced_project, second_run):
    first, second = _metric_files(reproduced_project), _metric_files(second_run)
    assert first == second and {"train.json", "eval/gsm8k_tuned.json", "perplexity/gsm8k_base.json"} <= set(first)
    for name in first:
        a = json.loads((reproduced_project / "metrics" / name).read_text())
        b = json.loads((second_run / "metrics" / name).read_text())
        assert _without_timing(a) == _without_timing(b), f"metrics/{name} differs between two runs"
    train = json.loads((second_run / "metrics" / "train.json").read_text())
    assert _timing_keys(train) == TIMING_KEYS  # the keys ignored above do exist
    assert train["train"]["resumed"] is False


@pytest.mark.slow
def test_two_runs_give_identical_outputs(reproduced_project, second_run):
    first, second = _recorded_outputs(reproduced_project), _recorded_outputs(second_run)
    assert first.keys() == second.keys()
    assert {"models/adapter", "models/merged", "data/generations/gsm8k_tuned.jsonl"} <= first.keys()
    differing = sorted(path for path in first if first[path] != second[path])
    assert differing == [], f"outputs differ between two runs with the same params and seed: {differing}"
