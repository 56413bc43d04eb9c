"""bench/import_floor.py: the libraries' import cost in fresh processes, the floor under a stage's start-up."""

import json
import sys

from conftest import REPO_ROOT, run


def test_times_each_library_in_a_fresh_process(tmp_path):
    out = tmp_path / "floor.json"
    done = run([sys.executable, "bench/import_floor.py", "--repeats", "2", "--json", str(out)], cwd=REPO_ROOT)
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["import floor, process 1", "import floor, process 2"]
    runs = json.loads(out.read_text())
    assert len(runs) == 2
    for seconds in runs:
        assert all(seconds[key] > 0 for key in ("torch", "transformers", "peft"))
        assert abs(seconds["total"] - (seconds["torch"] + seconds["transformers"] + seconds["peft"])) < 1e-6
        # torch alone takes a measurable time anywhere: a probe that imported nothing would read ~0
        assert seconds["torch"] > 0.05
