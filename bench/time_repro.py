"""Wall time of the default `dvc repro`, end to end, model load included, with each stage's share.

Copies this project's tracked files into a fresh git repository, points `model.name` and `data.source` at
local directories and `svamp.source` at a local file (or turns SVAMP off; nothing is downloaded), runs
`dvc repro` from scratch and then a no-op `dvc repro`, and timestamps every line DVC prints, so the slow stages
show. Every other param stays as in params.yaml, but for each `--set KEY=VALUE` (e.g. a random-weight model's
merge check threshold); a KEY the tree's params.yaml lacks (an older baseline) is left out and named in the output.

    python bench/time_repro.py --model DIR --data DIR [--svamp SVAMP.json] --out OUT [--profile] [--tree DIR]
                               [--set KEY=VALUE ...]
(the model directory: e.g. the TinyLlama-arch base that `bench/bench.py --save-base DIR` builds).
With --profile every stage process runs under cProfile (slower) and OUT/stage_profiles.txt shows, per stage,
where its time went: imports, model loads, saves, the work itself."""

from __future__ import annotations

import argparse
import atexit
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
_STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def copy_project(dest: Path, tree: Path | None = None) -> None:
    """This checkout's tracked files, or every file of `tree` (e.g. an earlier commit's `git archive`)."""
    if tree is not None:
        shutil.copytree(tree, dest, dirs_exist_ok=True)
        return
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def apply_overrides(params: dict, overrides: list[str]) -> tuple[dict[str, object], list[str]]:
    """Sets each dotted KEY=VALUE (VALUE read as YAML) that params already has; returns what was set and the
    keys it lacks."""
    applied, missing = {}, []
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise SystemExit(f"--set {override!r}: expected KEY=VALUE, e.g. eval.merge_min_top1_agreement=0.9")
        *parents, leaf = key.split(".")
        section = params
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            missing.append(key)
            continue
        section[leaf] = applied[key] = yaml.safe_load(text)
    return applied, missing


def timed_run(command: list[str], cwd: Path, env: dict, log) -> tuple[float, dict[str, float], int]:
    """Run, echoing each output line with its elapsed time; returns wall seconds and seconds per stage."""
    start = time.perf_counter()
    stages: dict[str, float] = {}
    current, current_start = None, start
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        now = time.perf_counter()
        print(f"[{now - start:7.1f} s] {line}", end="", file=log, flush=True)
        match = _STAGE_LINE.match(line)
        if match:
            if current:
                stages[current] = now - current_start
            current, current_start = match.group(1), now
    returncode = process.wait()
    end = time.perf_counter()
    if current:
        stages[current] = end - current_start
    return end - start, stages, returncode


def profile_summary(profiles: Path, rows: int = 25) -> str:
    """Per stage: time under cProfile, the part spent compiling Python source to bytecode (high where
    site-packages holds no .pyc files), then the calls with the largest cumulative time."""
    parts = []
    for path in sorted(profiles.glob("*.prof"), key=lambda p: p.stat().st_mtime):
        stats = pstats.Stats(str(path))
        bytecode = sum(
            own
            for (_, _, name), (_, _, own, _, _) in stats.stats.items()
            if name == "<built-in method builtins.compile>"
        )
        parts.append(f"== {path.stem}: {stats.total_tt:.1f} s under cProfile, {bytecode:.1f} s compiling bytecode ==\n")
        buffer = io.StringIO()
        stats.stream = buffer
        stats.sort_stats("cumulative").print_stats(rows)
        parts.append(buffer.getvalue().split("\n", 6)[-1])
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="local model directory for model.name")
    parser.add_argument("--data", type=Path, required=True, help="directory with train.jsonl and test.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="directory for repro_timing.json")
    parser.add_argument("--svamp", type=Path, help="SVAMP.json for svamp.source (default: SVAMP off)")
    parser.add_argument("--profile", action="store_true", help="run each stage under cProfile")
    parser.add_argument(
        "--tree",
        type=Path,
        help="time this project tree instead of the checkout, e.g. a baseline: git archive REV | tar -x -C DIR",
    )
    parser.add_argument("--params", type=Path, help="start from this params file (default: the tree's params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a param for this run, e.g. eval.merge_min_top1_agreement=0.9 (repeatable)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="qlora-repro-"))
    atexit.register(shutil.rmtree, work, True)  # a TinyLlama-arch base is 2.2 GB: never left behind
    copy_project(work, args.tree)
    params_file = work / "params.yaml"
    params = yaml.safe_load((args.params or params_file).read_text())
    params["model"]["name"] = str(args.model.resolve())
    params["data"]["source"] = str(args.data.resolve())
    # A baseline tree may hold SVAMP as the svamp section (before eval_sets), or none at all (before SVAMP).
    svamp = params.get("eval_sets", {}).get("svamp") or params.get("svamp")
    if svamp is not None and args.svamp:
        svamp["source"] = str(args.svamp.resolve())
    elif svamp is not None:
        svamp["enabled"] = False
    overrides, missing = apply_overrides(params, args.overrides)
    for key in missing:
        print(f"--set {key}: not in this tree's params.yaml, left out")
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    # Stage commands call `python`: make it this interpreter, with this interpreter's import path.
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    # A wrapper, not a symlink: a virtual environment's python finds its packages by the path it was run as.
    wrapper = bin_dir / "python"
    profiles = args.out.resolve() / "profiles"
    # Stage commands are `python -m stages.<name> ...`: "$2" names the stage's profile.
    profiler = f'-m cProfile -o "{profiles}/$2.$$.prof" ' if args.profile else ""
    if args.profile:
        shutil.rmtree(profiles, ignore_errors=True)
        profiles.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" {profiler}"$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    git = shutil.which("git")
    if git:
        for command in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=bench", "-c", "user.email=b@b", "commit", "-qm", "bench"],
        ):
            subprocess.run([git, *command], cwd=work, check=True, env=env)
    else:
        subprocess.run([sys.executable, "-m", "dvc", "config", "core.no_scm", "true"], cwd=work, check=True, env=env)

    dvc = [sys.executable, "-m", "dvc"]
    wall, stages, returncode = timed_run([*dvc, "repro"], work, env, sys.stdout)
    noop_wall, _, noop_returncode = timed_run([*dvc, "repro"], work, env, sys.stdout)
    metrics = {}
    for path in sorted((work / "metrics").glob("*.json")):
        metrics[path.name] = json.loads(path.read_text())
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git": bool(git),
        "params_set": overrides,
        "params_not_in_tree": missing,
        "dvc_repro_seconds": wall,
        "dvc_repro_returncode": returncode,
        "stage_seconds": stages,
        "noop_repro_seconds": noop_wall,
        "noop_returncode": noop_returncode,
        "train_metrics": (metrics.get("train.json") or {}).get("train"),
    }
    if args.profile:
        (args.out / "stage_profiles.txt").write_text(profile_summary(profiles))
    (args.out / "repro_timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"dvc repro: {wall:.1f} s (rc {returncode}); no-op dvc repro: {noop_wall:.1f} s")
    for stage, seconds in stages.items():
        print(f"  {stage:24s} {seconds:6.1f} s")
    if returncode:
        sys.exit(returncode)


if __name__ == "__main__":
    main()
