"""tools/run_queue.py reads `dvc queue status` as DVC 3.67 prints it (the text below is a real one, from the
stalled queue the tool exists for); the restart itself runs in test_dvc_workflow's queued sweeps."""

import sys

from conftest import REPO_ROOT

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
