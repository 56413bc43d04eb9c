#!/usr/bin/env bash
# The default `dvc repro` timed on one machine, this working tree against a baseline commit's tree, alternated
# (new, baseline, new: the first run pays the cold caches), in one device call of about 7 minutes.
#
#   bash bench/gpu_repro.sh OUT [BASELINE_TREE]
#
# OUT: where each run's repro_timing.json and log go. BASELINE_TREE: a directory holding the baseline's files
# (e.g. `git archive 87611f7 | tar -x -C .bench/baseline`, made here and carried: the machine's repo copy has no
# git history to archive from); without it only the current tree runs, twice.
# Needs, beside the repo: .bench/ (gsm8k/, tokenizer.model, svamp/SVAMP.json) and, where dvc and dvclive are not installed (the
# lent H200's image), .whl/ (dvc, dvclive and the wheels they need) and .gpusite/ (bitsandbytes, datasets).
set -euo pipefail
out=${1:?usage: bench/gpu_repro.sh OUT [BASELINE_TREE]}
baseline=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p "$out"
export DVC_NO_ANALYTICS=1
# First, before any install here, the libraries' own import time, beside which each stage's `start-up: imports …`
# reads (a stage cannot beat it).
# GPU_REPRO_PYCACHE=DIR: also with PYTHONPYCACHEPREFIX=DIR (bytecode written once, then read: what a pip install
# that compiled its bytecode gives), and a last run `new-pyc`, this tree with it (an image whose site-packages hold
# no bytecode and PYTHONDONTWRITEBYTECODE is set compiles torch and transformers again in every stage).
pycache=${GPU_REPRO_PYCACHE:-}
python3 bench/import_floor.py --repeats "${GPU_REPRO_FLOOR_REPEATS:-3}" ${pycache:+--pycache-prefix "$pycache"} \
  --json "$out/import_floor.json" | tee "$out/import_floor.txt" || true
if [ -d .gpusite ]; then export PYTHONPATH="$root/.gpusite${PYTHONPATH:+:$PYTHONPATH}"; fi
if ! python3 -c "import dvc, dvclive" 2>/dev/null; then
  site=/tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$site" PATH="$site/bin:$PATH"
  # bytecode, as pip writes it at install: otherwise every stage pays compiling dvc's sources
  python3 -m compileall -q -j 0 "$site" .gpusite >/dev/null || true
fi
python3 -c "from importlib.metadata import version as v; print('dvc', v('dvc'), 'dvclive', v('dvclive'))"
# GPU_REPRO_MODEL / GPU_REPRO_DATA: another local model directory and GSM8K directory (e.g. a CPU dry run)
model=${GPU_REPRO_MODEL:-/tmp/base}
data=${GPU_REPRO_DATA:-.bench/gsm8k}
# SVAMP on, as shipped, when its file is here (cp ../shared/data/svamp/SVAMP.json .bench/svamp/ and carry it)
svamp=${GPU_REPRO_SVAMP:-.bench/svamp/SVAMP.json}
svamp_arg=() && [ -f "$svamp" ] && svamp_arg=(--svamp "$svamp")
[ -d "$model" ] || python3 bench/bench.py --save-base "$model" --tokenizer .bench/tokenizer.model
# The working tree as it is (the machine's copy may list new files in no `git ls-files`)
tree=/tmp/tree
rm -rf "$tree" && mkdir -p "$tree"
tar --exclude=./.git --exclude=./.gpusite --exclude=./.bench --exclude=./.whl --exclude=./.venv -cf - . | tar -xf - -C "$tree"
# A failed run (its rc is in its repro_timing.json, its log beside it) does not stop the others.
# Every param as shipped, the merge check's thresholds included (GPU_REPRO_SET: extra `--set KEY=VALUE`, e.g. for
# a baseline older than the float32 merge check, which failed a random-weight base's bf16 merge on near-ties).
repro() {
  mkdir -p "$out/$1"
  python3 bench/time_repro.py --model "$model" --data "$data" --out "$out/$1" --tree "$2" "${svamp_arg[@]}" \
    ${GPU_REPRO_SET:-} \
    >"$out/$1/repro.log" 2>&1 || echo "$1: time_repro exited $? (see $out/$1/repro.log)"
  tail -n 12 "$out/$1/repro.log"
}
# GPU_REPRO_PYCACHE_FIRST=1: new-pyc before the others (it then pays the cold caches; a call cut short keeps it)
pyc_first=${GPU_REPRO_PYCACHE_FIRST:-0}
repro_pyc() { PYTHONPYCACHEPREFIX=$pycache PYTHONDONTWRITEBYTECODE='' repro new-pyc "$tree"; }
if [ -n "$pycache" ] && [ "$pyc_first" = 1 ]; then repro_pyc; fi
repro new1 "$tree"
if [ -n "$baseline" ]; then repro baseline "$baseline"; fi
# GPU_REPRO_ONCE=1: new then baseline only (a device call too short for three runs).
if [ "${GPU_REPRO_ONCE:-0}" != 1 ]; then repro new2 "$tree"; fi
if [ -n "$pycache" ] && [ "$pyc_first" != 1 ]; then repro_pyc; fi
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
runs = {p.parent.name: json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/repro_timing.json")}
names = [n for n in ("new1", "baseline", "new2", "new-pyc") if n in runs]
stages = list(dict.fromkeys(s for n in names for s in runs[n]["stage_seconds"]))
print("| stage | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for stage in stages:
    print(f"| {stage} | " + " | ".join(f"{runs[n]['stage_seconds'].get(stage, float('nan')):.1f}" for n in names) + " |")
for key, label in (("dvc_repro_seconds", "dvc repro"), ("noop_repro_seconds", "no-op dvc repro")):
    print(f"| **{label}** | " + " | ".join(f"{runs[n][key]:.1f} (rc {runs[n]['dvc_repro_returncode']})" for n in names) + " |")
EOF
