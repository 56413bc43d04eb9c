#!/usr/bin/env bash
# GRPO on the full-split preset's SFT adapter through `dvc exp run -S rl.enabled=true` (issue 33), in the repository
# bench/gpu_preset.sh left at PRESET_WORK (its workspace holds the preset's experiment, so only rl, merge, the tuned
# evaluations and compare run), then the RL run against the preset paired with tools/compare_runs.py on GSM8K and
# SVAMP. Writes to OUT: exp_run.log, params.yaml, dvc.lock, comparison.md, compare_<set>.txt, versions.txt and run.tgz
# (metrics/, reports/, dvclive/ with the RL curves, compare_<set>.json: `tar xzf run.tgz`).
#
#   PRESET_WORK=/tmp/preset-work bash bench/gpu_rl.sh OUT [-S rl.KEY=VALUE ...]
#
# Run again with the same PRESET_WORK after a call's time limit cut it: the rl stage resumes from its last checkpoint.
set -euo pipefail
out=${1:?usage: PRESET_WORK=DIR bash bench/gpu_rl.sh OUT [-S rl.KEY=VALUE ...]}
shift
work=${PRESET_WORK:?PRESET_WORK: the repository bench/gpu_preset.sh ran the preset in}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(realpath "$out")
# shellcheck source=bench/fresh_repo.sh
source "$root/bench/fresh_repo.sh"
ensure_dvc "$root"
cd "$work"
# The preset's experiment: the newest one `dvc exp show` lists before this run (its name is the baseline below).
preset=$(dvc exp show --json | python3 -c "
import json, sys
rows = json.load(sys.stdin)
names = [e.get('name') for r in rows for x in (r.get('experiments') or []) for e in (x.get('revs') or []) if e.get('name')]
print(names[0] if names else '')")
[ -n "$preset" ] || { echo "no experiment in $work: run bench/gpu_preset.sh with PRESET_WORK=$work first"; exit 2; }
command=(dvc exp run -S rl.enabled=true "$@")
echo "# in $work, on top of the preset's experiment $preset" | tee -a "$out/exp_run.log"
status=0
run_logged "$out/exp_run.log" "${command[@]}" || status=$?
cp params.yaml dvc.lock "$out/" 2>/dev/null || true
cp reports/comparison.md "$out/" 2>/dev/null || true
record_versions "$out/versions.txt"
pairs=$(mktemp -d)
if [ "$status" = 0 ]; then
  rl=$(grep -oE "Ran experiment\(s\): \S+" "$out/exp_run.log" | tail -1 | awk '{print $3}')
  for set in gsm8k svamp; do
    python3 "$root/tools/compare_runs.py" "$preset" "$rl" --set "$set" | tee "$out/compare_$set.txt" || true
    python3 "$root/tools/compare_runs.py" "$preset" "$rl" --set "$set" --json >"$pairs/compare_$set.json" || true
  done
fi
pack_run "$out" -C "$pairs" .
exit "$status"
