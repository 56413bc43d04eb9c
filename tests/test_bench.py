"""The speed benchmark's CPU smoke mode: the same script that produces the GPU table runs end to end."""

import json
import sys

import pytest

from conftest import REPO_ROOT, run, tool_env


@pytest.mark.slow
def test_bench_smoke_runs_all_configurations(tmp_path):
    result = run([sys.executable, "bench/bench.py", "--smoke", "--out", str(tmp_path)], cwd=REPO_ROOT, env=tool_env())
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["train"]) == {"seed-style", "ours", "lean"}
    for name, row in results["train"].items():
        assert row["tokens_per_second"] > 0, name
        # Same rows and effective batch: the same number of optimizer steps, each logged.
        assert len(row["losses"]) == len(results["train"]["ours"]["losses"]) > 0, name
    assert results["eval"]["questions"] == 16 and results["eval"]["generation_seconds"] > 0
    assert "| seed-style |" in result.stdout and "× seed-style" in result.stdout
    assert (tmp_path / "table.md").read_text().startswith("| run |")
