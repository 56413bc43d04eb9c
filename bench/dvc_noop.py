"""Time a no-op `dvc repro` when the DVC cache holds multi-GB models.

Builds a throw-away git + DVC repo (default under /tmp) whose pipeline has the shape of ours: a `base`
stage and a `merge` stage that each write a model directory holding one big `model.safetensors` of random
bytes (2.2 GB by default, TinyLlama-1.1B in bf16), four eval stages reading them and a `compare` stage.
It uses the cache.type of this project's .dvc/config. After one real `dvc repro` it times, each several
times: `dvc version` (DVC start-up), a no-op `dvc repro`, `dvc status`, a no-op `dvc exp run`, and a
`dvc repro` after `touch`ing the merged model (mtime changed, content not: DVC re-hashes it, no stage runs).
The repo and its cache are deleted at the end unless --keep.

    python bench/dvc_noop.py --size-gb 2.2 --repeats 5
"""

from __future__ import annotations

import argparse
import configparser
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

MAKE_MODEL = """\
import json, os, sys
out, size, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(out, exist_ok=True)
chunk = 64 << 20
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    left = size
    while left:
        n = min(chunk, left)
        f.write(os.urandom(n))
        left -= n
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"seed": seed, "bytes": size}, f)
"""

EVAL = """\
import json, os, sys
model, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "w") as f:
    json.dump({"bytes": os.path.getsize(os.path.join(model, "model.safetensors"))}, f)
"""

DVC_YAML = """\
stages:
  base:
    cmd: python make_model.py models/base {size} base
    deps: [make_model.py]
    outs: [models/base]
  merge:
    cmd: python make_model.py models/merged {size} merged
    deps: [make_model.py, models/base]
    outs: [models/merged]
  perplexity:
    foreach: {{base: models/base, tuned: models/merged}}
    do:
      cmd: python eval.py ${{item}} metrics/perplexity_${{key}}.json
      deps: [eval.py, "${{item}}"]
      metrics:
      - metrics/perplexity_${{key}}.json:
          cache: false
  generate:
    foreach: {{base: models/base, tuned: models/merged}}
    do:
      cmd: python eval.py ${{item}} metrics/generate_${{key}}.json
      deps: [eval.py, "${{item}}"]
      metrics:
      - metrics/generate_${{key}}.json:
          cache: false
  compare:
    cmd: cat metrics/generate_base.json metrics/generate_tuned.json > metrics/compare.txt
    deps: [metrics/generate_base.json, metrics/generate_tuned.json]
    outs:
    - metrics/compare.txt
"""


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def project_cache_type() -> str:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    return config.get("cache", "type", fallback="copy").strip('"')


def fs_type(path: Path) -> str:
    try:
        cmd = ["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)]
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


def timed(label: str, cmd: list[str], cwd: Path, repeats: int, before=None) -> dict:
    times = []
    output = ""
    for _ in range(repeats):
        if before:
            before()
        seconds, output = run(cmd, cwd)
        times.append(seconds)
    row = {
        "label": label,
        "command": " ".join(cmd),
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "last_output": output,
    }
    print(f"{label:<48} median {row['median']:.2f} s  (min {row['min']:.2f}, max {row['max']:.2f})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.2, help="size of each model file, GB (1e9 bytes)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", default=tempfile.gettempdir(), help="where the throw-away repo goes")
    parser.add_argument("--cache-type", default=None, help="default: this project's .dvc/config cache.type")
    parser.add_argument("--keep", action="store_true", help="do not delete the repo and its cache")
    args = parser.parse_args()

    size = int(args.size_gb * 1e9)
    root = Path(args.root)
    free = shutil.disk_usage(root).free
    # Cache + workspace are hardlinked with hardlink,symlink; a copy cache type needs twice as much.
    need = 4 * size + (1 << 30)
    if free < need:
        sys.exit(f"{root}: {free / 1e9:.1f} GB free, need {need / 1e9:.1f} GB")
    cache_type = args.cache_type or project_cache_type()
    work = Path(tempfile.mkdtemp(prefix="dvc-noop-", dir=root))
    try:
        (work / "make_model.py").write_text(MAKE_MODEL)
        (work / "eval.py").write_text(EVAL)
        (work / "dvc.yaml").write_text(DVC_YAML.format(size=size))
        run(["git", "init", "-q", "-b", "main"], work)
        run(["git", "config", "user.email", "bench@example.com"], work)
        run(["git", "config", "user.name", "bench"], work)
        run(["dvc", "init", "-q"], work)
        run(["dvc", "config", "core.analytics", "false"], work)
        run(["dvc", "config", "cache.type", cache_type], work)
        run(["git", "add", "-A"], work)
        run(["git", "commit", "-q", "-m", "pipeline"], work)
        first, _ = run(["dvc", "repro"], work)
        print(f"first dvc repro (writes and hashes 2 x {args.size_gb} GB): {first:.1f} s", flush=True)
        run(["git", "add", "-A"], work)
        run(["git", "commit", "-q", "-m", "repro"], work)
        merged = work / "models" / "merged" / "model.safetensors"
        nlink = merged.stat().st_nlink

        rows = [
            timed("DVC start-up: dvc version", ["dvc", "version"], work, args.repeats),
            timed("no-op: dvc repro", ["dvc", "repro"], work, args.repeats),
            timed("no-op: dvc status", ["dvc", "status"], work, args.repeats),
            timed("no-op: dvc exp run", ["dvc", "exp", "run"], work, min(args.repeats, 3)),
            timed(
                "dvc repro after touch models/merged/model.safetensors",
                ["dvc", "repro"],
                work,
                min(args.repeats, 3),
                before=lambda: os.utime(merged),
            ),
        ]
        for row in rows[1:3]:
            if "Running stage" in row["last_output"]:
                sys.exit(f"{row['command']} ran a stage: not a no-op\n{row['last_output']}")
        _, dvc_version = run(["dvc", "--version"], work)
        startup = rows[0]["median"]
        noop = rows[1]["median"]
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        report = textwrap.dedent(
            f"""\
            Machine: {os.cpu_count()} CPU cores ({cpu}), {fs_type(root)} filesystem ({root}),
            DVC {dvc_version.strip()}, cache.type `{cache_type}`, 2 model files of {size / 1e9:.1f} GB
            (workspace link count of models/merged/model.safetensors after repro: {nlink}).
            First `dvc repro` (writes and hashes both models): {first:.1f} s.

            | command | median s | min s | max s |
            |---|---|---|---|
            """
        )
        for row in rows:
            report += f"| {row['label']} | {row['median']:.2f} | {row['min']:.2f} | {row['max']:.2f} |\n"
        report += f"\nNo-op `dvc repro` minus DVC start-up: {noop - startup:.2f} s (goal: <= 3 s).\n"
        print()
        print(report)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
