"""Tests use the shipped params, not the workspace's: after a user runs the README's experiments (each
`dvc exp run -S` writes its values into the workspace params.yaml), the params-sensitive tests still pass."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml

from conftest import (
    REPO_ROOT,
    apply_settings,
    checkout_files,
    dump_params,
    git,
    readme_experiment_settings,
    run,
    shipped_params,
    tool_env,
)

# The tests that read params (and failed when they read the workspace file): bench smoke runs, the two-process
# training comparison, and the params file tests.
PARAMS_SENSITIVE = [
    "tests/test_config.py",
    "tests/test_bench.py::test_bench_smoke_runs_all_configurations",
    "tests/test_bench.py::test_multi_gpu_bench_smoke_runs_one_process_against_two",
    "tests/test_distributed.py::test_two_processes_match_one_at_equal_effective_batch",
]


def test_readme_experiments_change_the_params_the_tests_depend_on():
    """The README's experiments do move the settings the params-sensitive tests count steps and batches by, so
    the test below exercises what broke them."""
    after = shipped_params()
    for settings in readme_experiment_settings():
        apply_settings(after, settings)
    before = shipped_params()
    changed = {f"{s}.{k}" for s in after for k in after[s] if after[s][k] != before.get(s, {}).get(k)}
    assert {"train.micro_batch_size", "train.learning_rate", "train.epochs", "data.train_size"} <= changed, changed


def _copy_of_this_checkout(dest):
    for rel in checkout_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "-c", "user.email=tests@example.com", "-c", "user.name=tests", "commit", "-q", "-m", "clone")


@pytest.mark.slow
def test_params_sensitive_tests_pass_after_the_readme_experiments(tmp_path):
    clone = tmp_path / "clone"
    _copy_of_this_checkout(clone)
    workspace = shipped_params()
    for settings in readme_experiment_settings():
        apply_settings(workspace, settings)
    (clone / "params.yaml").write_text(dump_params(workspace))
    assert yaml.safe_load((clone / "params.yaml").read_text()) != shipped_params()

    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARAMS_SENSITIVE],
        cwd=clone,
        env=tool_env(),
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert " failed" not in result.stdout and " passed" in result.stdout
