#!/usr/bin/env bash
# The README's sweep on a real model: learning rates queued with `dvc exp run --queue`, run by tools/run_queue.py,
# ranked by `tools/compare_runs.py --leaderboard` against one of them (issue 29 item 3), in a fresh git repository
# made from this working tree. Writes to OUT: sweep.log (every command and its output), exp_show.md, exp_show.json
# (every experiment's deps and outputs with their hashes: two sweeps' adapters and answers compare byte for byte),
# leaderboard/leaderboard.{md,png}, queue.txt (`dvc queue status` and each experiment's log), versions.txt.
#
#   bash bench/gpu_sweep.sh OUT MODEL GSM8K_DIR [-S KEY=VALUE ...]
#
# SWEEP_LRS (default 2e-4,5e-4,1e-3): the learning rates, one experiment each, named lr-<rate>; the first is the
# baseline the others are ranked against. The recipe: the full-split preset's adapter (rsLoRA r16 on all seven
# linear layers, micro-batch 32) on SWEEP_TRAIN_ROWS train rows (default 2000) for 1 epoch, evaluated on SWEEP_EVAL
# test questions (default 1319), SVAMP off; extra -S settings go after it. SWEEP_JOBS (default 1): experiments run at
# once (`tools/run_queue.py -j`). On one H100 (2026-12-07), one at a time, two of three finished in 500 s, each
# bound by start-up and evaluation (check_params 30 s on the GGUF, the base's and the tuned model's 1,319 answers):
# the base and the model check now run once before the queue, and SWEEP_JOBS=3 runs the three on the GPU together
# (≈14 GiB each while training): 386 s for the whole script on one H100 (2026-12-08,
# bench/results/sweep_2026-12-08). On the lent GPU, run it after
# `bash bench/gpu_peers.sh gguf` (the GGUF in /tmp/smol) and carry .whl (dvc, dvclive) as bench/gpu_preset.sh says.
set -euo pipefail
out=${1:?usage: bench/gpu_sweep.sh OUT MODEL GSM8K_DIR [-S KEY=VALUE ...]}
model=${2:?MODEL}; [ -e "$model" ] && model=$(realpath "$model"); data=$(realpath "${3:?GSM8K_DIR}")
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/fresh_repo.sh
source "$root/bench/fresh_repo.sh"
mkdir -p "$out"
out=$(realpath "$out")
ensure_dvc "$root"
work=$(fresh_repo "$root")
IFS=, read -r -a rates <<<"${SWEEP_LRS:-2e-4,5e-4,1e-3}"
cd "$work"
# What the queue did, into OUT, however the script ends: the first GPU attempt, cut by an outer `timeout`, ended with
# both experiments unfinished and nothing to say why. SWEEP_TIMEOUT (seconds) stops the queue from inside instead.
record_queue() {
  { dvc queue status; for rate in "${rates[@]}"; do echo "== dvc queue logs lr-$rate"; dvc queue logs "lr-$rate"; done; } \
    >"$out/queue.txt" 2>&1 || true
  dvc queue stop --kill >/dev/null 2>&1 || true  # no worker left running in a removed repository
}
trap 'record_queue; rm -rf "$work"' EXIT
recipe=(-S "model.name=$model" -S "data.source=$data" -S eval_sets.svamp.enabled=false
  -S "data.train_size=${SWEEP_TRAIN_ROWS:-2000}" -S "eval_sets.gsm8k.size=${SWEEP_EVAL:-1319}" -S peft.method=rslora
  -S 'lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]' -S train.micro_batch_size=32
  "$@")
run() {
  echo "$ $*" | tee -a "$out/sweep.log"
  "$@" 2>&1 | tee -a "$out/sweep.log"
  return "${PIPESTATUS[0]}"
}
start=$SECONDS
# The recipe and the base's evaluation once, committed as the sweep's baseline: the queued experiments then differ in
# the learning rate alone (the leaderboard's params diff says so), restore the base's answers from DVC's cache instead
# of each generating them again, and skip check_params' look at the model (data/model_checked.json, committed).
run dvc exp run "${recipe[@]}" evaluate_base@gsm8k
git add -A && git commit -qm "the sweep's recipe, the base evaluated"
for rate in "${rates[@]}"; do
  run dvc exp run --queue --name "lr-$rate" -S "train.learning_rate=$rate"
done
set +e
run python tools/run_queue.py -j "${SWEEP_JOBS:-1}" ${SWEEP_TIMEOUT:+--timeout "$SWEEP_TIMEOUT"}
status=$?
dvc exp show --md --drop '.*' --keep 'Experiment|^train\.learning_rate$|^gsm8k\.tuned\.exact_match_(flexible|strict)$|^gsm8k\.paired\.mcnemar_p$' \
  >"$out/exp_show.md" 2>>"$out/sweep.log"
dvc exp show --json >"$out/exp_show.json" 2>>"$out/sweep.log"
names=("${rates[@]/#/lr-}")
run python tools/compare_runs.py --leaderboard "${names[@]:1}" --baseline "${names[0]}" --out "$out/leaderboard"
set -e
echo "sweep: run_queue rc $status, $((SECONDS - start)) s wall" | tee -a "$out/sweep.log"
record_versions "$out/versions.txt"
exit "$status"
