"""What importing the libraries alone costs on this machine, in fresh processes, to read each stage's start-up line
against (`start-up: imports 9.6 s, …`): a stage cannot import faster than torch and transformers do.

    python bench/import_floor.py [--repeats 3] [--json OUT]

Each repeat is a new interpreter importing torch, then transformers with the model auto classes (what every model
stage loads through), then peft (the stages that train or merge); the first repeat pays cold file caches, the
later ones are what a stage after the first meets."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, time
start = time.perf_counter()
import torch
torch_done = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer
transformers_done = time.perf_counter()
import peft
peft_done = time.perf_counter()
print(json.dumps({"torch": torch_done - start, "transformers": transformers_done - torch_done,
                  "peft": peft_done - transformers_done, "total": peft_done - start}))
"""


def import_seconds(repeats: int) -> list[dict[str, float]]:
    """One dict of seconds per fresh interpreter: torch, transformers (with the auto classes), peft, total."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args()
    runs = import_seconds(args.repeats)
    for number, run in enumerate(runs, 1):
        print(
            f"import floor, process {number}: torch {run['torch']:.2f} s, transformers + auto classes "
            f"{run['transformers']:.2f} s, peft {run['peft']:.2f} s; {run['total']:.2f} s in all"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
