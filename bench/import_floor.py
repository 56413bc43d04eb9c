"""What importing the libraries alone costs on this machine, in fresh processes, to read each stage's start-up line
against (`start-up: imports 9.6 s, …`): a stage cannot import faster than torch and transformers do.

    python bench/import_floor.py [--repeats 3] [--pycache-prefix DIR] [--json OUT]

Each repeat is a new interpreter importing torch, then transformers with the model auto classes (what every model
stage loads through), then peft (the stages that train or merge); the first repeat pays cold file caches, the
later ones are what a stage after the first meets.

Where the libraries' directories hold no bytecode and cannot take it (a read-only image installed without it), every
process compiles their sources again: the bytecode line says how much is cached, and --pycache-prefix DIR repeats the
runs with PYTHONPYCACHEPREFIX=DIR (the first of them writes the bytecode there, the later ones read it; with
PYTHONDONTWRITEBYTECODE unset for them, which the environment line shows)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qlora_gsm8k.startup import HEAVY_LIBRARIES, uncompiled_libraries  # noqa: E402

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


def import_seconds(repeats: int, pycache_prefix: Path | None = None) -> list[dict[str, float]]:
    """One dict of seconds per fresh interpreter: torch, transformers (with the auto classes), peft, total."""
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if pycache_prefix is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache_prefix)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # the point of the prefix is that bytecode gets written there
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def bytecode_state(package: str) -> dict:
    """How many of the package's sources have bytecode where this interpreter reads it, and whether each process
    compiles it again (none there, and none written: the check a stage's start-up line makes)."""
    spec = importlib.util.find_spec(package)
    root = Path(next(iter(spec.submodule_search_locations)))
    sources = list(root.rglob("*.py"))
    cached = sum(Path(importlib.util.cache_from_source(str(s), optimization="")).exists() for s in sources)
    recompiled = bool(uncompiled_libraries([package]))
    return {"path": str(root), "sources": len(sources), "cached": cached, "compiled_in_every_process": recompiled}


def describe(label: str, runs: list[dict[str, float]]) -> list[str]:
    return [
        f"import floor{label}, process {number}: torch {run['torch']:.2f} s, transformers + auto classes "
        f"{run['transformers']:.2f} s, peft {run['peft']:.2f} s; {run['total']:.2f} s in all"
        for number, run in enumerate(runs, 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pycache-prefix", type=Path, help="also time the imports with PYTHONPYCACHEPREFIX=DIR")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    args = parser.parse_args()
    result = {
        "environment": {key: os.environ.get(key) for key in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")},
        "bytecode": {name: bytecode_state(name) for name in HEAVY_LIBRARIES},
        "runs": import_seconds(args.repeats),
    }
    print("environment: " + ", ".join(f"{key}={value!r}" for key, value in result["environment"].items()))
    for name, state in result["bytecode"].items():
        recompiled = "compiled again in every process" if state["compiled_in_every_process"] else "no recompiling"
        print(
            f"bytecode: {name} {state['cached']} of {state['sources']} sources cached, {recompiled} ({state['path']})"
        )
    lines = describe("", result["runs"])
    if args.pycache_prefix is not None:
        result["pycache_prefix"] = str(args.pycache_prefix)
        result["runs_with_pycache_prefix"] = import_seconds(args.repeats, args.pycache_prefix)
        lines += describe(f" with PYTHONPYCACHEPREFIX={args.pycache_prefix}", result["runs_with_pycache_prefix"])
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
