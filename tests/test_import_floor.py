"""bench/import_floor.py: the libraries' import cost in fresh processes, the floor under a stage's start-up."""

import json
import sys

from conftest import REPO_ROOT, run


def _check_seconds(runs, count):
    assert len(runs) == count
    for seconds in runs:
        assert all(seconds[key] > 0 for key in ("torch", "transformers", "peft"))
        assert abs(seconds["total"] - (seconds["torch"] + seconds["transformers"] + seconds["peft"])) < 1e-6
        # torch alone takes a measurable time anywhere: a probe that imported nothing would read ~0
        assert seconds["torch"] > 0.05


def test_times_each_library_in_a_fresh_process(tmp_path):
    out = tmp_path / "floor.json"
    done = run([sys.executable, "bench/import_floor.py", "--repeats", "2", "--json", str(out)], cwd=REPO_ROOT)
    timed = [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("import floor")]
    assert timed == ["import floor, process 1", "import floor, process 2"]
    result = json.loads(out.read_text())
    _check_seconds(result["runs"], 2)
    for name in ("torch", "transformers", "peft"):
        state = result["bytecode"][name]
        assert 0 <= state["cached"] <= state["sources"] and state["sources"] > 10


def test_pycache_prefix_runs_write_bytecode_there(tmp_path):
    prefix, out = tmp_path / "pyc", tmp_path / "floor.json"
    command = [sys.executable, "bench/import_floor.py", "--repeats", "1", "--pycache-prefix", str(prefix)]
    run([*command, "--json", str(out)], cwd=REPO_ROOT)
    result = json.loads(out.read_text())
    _check_seconds(result["runs_with_pycache_prefix"], 1)
    # The prefixed process compiled what it imported into DIR (mirroring the sources' absolute paths)
    assert any(prefix.rglob("*.pyc"))
