"""Run DVC's experiment queue to its end: `dvc queue start -j N`, then wait until nothing is queued or running.

A DVC worker can exit after one or two experiments and leave the rest queued with "Worker status: 0 active,
0 idle" (treeverse/dvc#10562; seen here with dvc 3.67.1 when a queue ran a second time). This starts a worker
again whenever queued experiments wait with none running. Prints each experiment as it ends; exits 1 when any
failed (read its log with `dvc queue logs NAME`), 124 on --timeout.

    dvc exp run --queue -S lora.r=4,8,16 && python tools/run_queue.py -j 1
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time

_TASK = re.compile(r"^(?P<task>[0-9a-f]{7})\s+(?P<name>\S+)?\s+.*?\s(?P<status>Queued|Running|Success|Failed)\s*$")
_WORKERS = re.compile(r"Worker status: (\d+) active, (\d+) idle")
# A worker just started shows as neither active nor idle for a few seconds: restart only after this long.
STALL_SECONDS = 20.0


def dvc(*args: str) -> str:
    # Output to a file, not a pipe: the worker `dvc queue start` leaves running inherits its stdout, and reading a
    # pipe to its end waited for that worker, i.e. for the whole queue (no progress, no --timeout: two GPU sweeps lost).
    with tempfile.TemporaryFile("w+") as output:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", *args], stdout=output, stderr=subprocess.STDOUT, text=True
        )
        output.seek(0)
        text = output.read()
    if result.returncode != 0:
        sys.exit(f"error: dvc {' '.join(args)} failed: {text.strip()}")
    return text


def queue_status() -> tuple[dict[str, str], int]:
    return parse_queue_status(dvc("queue", "status"))


def parse_queue_status(text: str) -> tuple[dict[str, str], int]:
    """({task name (or id): status}, workers active + idle) from the text `dvc queue status` prints."""
    tasks = {}
    for line in text.splitlines():
        match = _TASK.match(line.strip())
        if match:
            tasks[match["name"] or match["task"]] = match["status"]
    workers = _WORKERS.search(text)
    return tasks, sum(map(int, workers.groups())) if workers else 0


def run_queue(jobs: int, timeout: float, poll: float = 3.0) -> int:
    already_done = {n for n, s in queue_status()[0].items() if s in ("Success", "Failed")}
    print(dvc("queue", "start", "-j", str(jobs)).strip(), flush=True)
    deadline = time.monotonic() + timeout
    stalled_since = None
    reported = set(already_done)
    while True:
        tasks, workers = queue_status()
        for name, status in tasks.items():
            if status in ("Success", "Failed") and name not in reported:
                reported.add(name)
                print(f"{name}: {status}", flush=True)
        waiting = [n for n, s in tasks.items() if s == "Queued"]
        running = [n for n, s in tasks.items() if s == "Running"]
        if not waiting and not running:
            break
        if waiting and not running and workers == 0:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > STALL_SECONDS:
                print(f"{len(waiting)} experiment(s) queued and no worker left: starting one again", flush=True)
                dvc("queue", "start", "-j", str(jobs))
                stalled_since = None
        else:
            stalled_since = None
        if time.monotonic() > deadline:
            print(f"error: the queue did not finish within {timeout:.0f} s; `dvc queue status` shows where it is")
            return 124
        time.sleep(poll)
    failed = sorted(n for n in reported - already_done if tasks.get(n) == "Failed")
    if failed:
        print(f"error: {len(failed)} experiment(s) failed: {', '.join(failed)}; dvc queue logs NAME shows why")
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-j", "--jobs", type=int, default=1, help="workers (1 per GPU: experiments share it)")
    parser.add_argument("--timeout", type=float, default=float("inf"), help="seconds before giving up")
    args = parser.parse_args()
    sys.exit(run_queue(args.jobs, args.timeout))


if __name__ == "__main__":
    main()
