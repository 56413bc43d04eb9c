"""tools/run_queue.py reads `dvc queue status` as DVC 3.67 prints it (the text below is a real one, from the
stalled queue the tool exists for), and keeps its --timeout while a worker runs; the restart itself runs in
test_dvc_workflow's queued sweeps."""

import sys

import pytest

from conftest import REPO_ROOT, dvc, git, run

sys.path.insert(0, str(REPO_ROOT / "tools"))
from run_queue import parse_queue_status  # noqa: E402

STALLED = """Task     Name        Created    Status
8274f38  picky-beak  02:52 PM   Queued
e358c4a  zinky-snug  02:50 PM   Success
b9def69  blear-stew  02:50 PM   Failed
15dab1c  elder-lieu  Sep 19, 2024   Running

Worker status: 0 active, 0 idle
"""


def test_status_gives_each_experiment_and_the_worker_count():
    tasks, workers = parse_queue_status(STALLED)
    assert tasks == {"picky-beak": "Queued", "zinky-snug": "Success", "blear-stew": "Failed", "elder-lieu": "Running"}
    assert workers == 0
    assert parse_queue_status(STALLED.replace("0 active, 0 idle", "1 active, 2 idle"))[1] == 3


def test_an_empty_queue_has_no_tasks():
    assert parse_queue_status("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n") == ({}, 0)


@pytest.mark.slow
def test_timeout_holds_while_the_worker_runs(tmp_path):
    """The worker `dvc queue start` leaves running inherits that command's stdout: read from a pipe, the start
    returned only when the whole queue had run, so neither progress nor --timeout came while it ran (two GPU
    sweeps ended by an outer timeout with nothing to show)."""
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "test@example.com")
    git(tmp_path, "config", "user.name", "test")
    dvc(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("pause: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  wait:\n    cmd: sleep 90 && echo done > out.txt\n    params: [pause]\n    outs: [out.txt]\n"
    )
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "a stage that takes 90 s")
    dvc(tmp_path, "exp", "run", "--queue", "--name", "slow-one", "-S", "pause=2")
    try:
        ran = run(
            [sys.executable, str(REPO_ROOT / "tools" / "run_queue.py"), "-j", "1", "--timeout", "3"],
            cwd=tmp_path,
            check=False,
            timeout=75,  # the old reading waited for the 90 s stage
        )
    finally:
        dvc(tmp_path, "queue", "kill", "slow-one", check=False)
        dvc(tmp_path, "queue", "stop", "--kill", check=False)
    assert ran.returncode == 124, ran.stdout + ran.stderr
    assert "did not finish within 3 s" in ran.stdout
