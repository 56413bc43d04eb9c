"""bench/same_outputs.py: two dvc.lock files compared output by output."""

import sys
from pathlib import Path

import yaml

from conftest import REPO_ROOT, run


def _lock(path: Path, outs: dict[str, dict[str, str]]) -> Path:
    stages = {stage: {"cmd": "x", "outs": [{"path": p, "md5": m} for p, m in o.items()]} for stage, o in outs.items()}
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}), encoding="utf-8")
    return path


def test_names_each_output_that_differs_or_is_missing(tmp_path):
    a = _lock(tmp_path / "a.lock", {"train": {"models/adapter": "1", "metrics/train.json": "2"}, "merge": {"m": "3"}})
    b = _lock(tmp_path / "b.lock", {"train": {"models/adapter": "1", "metrics/train.json": "9"}, "rl": {"r": "4"}})
    done = run([sys.executable, "bench/same_outputs.py", str(a), str(b)], cwd=REPO_ROOT)
    assert done.stdout.splitlines() == [
        "only in A: merge m",
        "only in B: rl r",
        "differs: train metrics/train.json",
        "same bytes: 1 of 4 outputs",
    ]
