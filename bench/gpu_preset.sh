#!/usr/bin/env bash
# The README's full-split preset on a real model through `dvc exp run`, SVAMP on, in a fresh git repository made from
# this working tree (issue 30 item 1: the preset's figures from the command printed beside them). Writes to OUT what
# bench/results/ keeps of it: params.yaml, dvc.lock, comparison.md, exp_run.log, versions.txt and run.tgz (metrics/,
# reports/ and dvclive/: `tar xzf run.tgz`).
#
#   bash bench/gpu_preset.sh OUT MODEL GSM8K_DIR SVAMP_JSON [-S KEY=VALUE ...]
#
# MODEL: e.g. the GGUF of tools/fetch-smollm2.sh. Extra -S settings go after the preset's (a CPU dry run shrinks it:
# -S data.train_size=16 ...). On the lent H200, run it in the call after `bash bench/gpu_peers.sh smollm2` (GGUF in
# /tmp/smol, bitsandbytes/datasets/liger in /tmp/site and /tmp/gpusite) and carry .whl (dvc, dvclive): the script
# installs them when they do not import.
#
# With `-S rl.enabled=true -S rl.KEY=VALUE …` after the four arguments, the same experiment goes on into GRPO, and the
# SFT adapter alone is paired with SFT + RL inside it (compare.json's `<set>.sft_vs_tuned`), one merge and one round of
# tuned evaluations for both. Such a run outlasts one device call: cut by the call's limit, the same command with the
# same PRESET_WORK in the next call skips the finished stages and resumes the rl stage from its last checkpoint
# (checked on CPU with the tiny model, 2026-12-07: cut at step 48 of 120, resumed from checkpoint-40, rc 0).
set -euo pipefail
out=${1:?usage: bench/gpu_preset.sh OUT MODEL GSM8K_DIR SVAMP_JSON [-S KEY=VALUE ...]}
model=${2:?MODEL}; [ -e "$model" ] && model=$(realpath "$model"); data=$(realpath "${3:?GSM8K_DIR}") svamp=$(realpath "${4:?SVAMP_JSON}")
shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(realpath "$out")
# shellcheck source=bench/fresh_repo.sh
source "$root/bench/fresh_repo.sh"
ensure_dvc "$root"
# PRESET_WORK: keep the repository there, and run in it again when it exists (a run cut by a device call's time
# limit goes on where it stopped: DVC restores the finished stages from its run-cache).
if [ -n "${PRESET_WORK:-}" ] && [ -d "$PRESET_WORK/.git" ]; then
  work=$PRESET_WORK
else
  work=$(fresh_repo "$root")
  if [ -n "${PRESET_WORK:-}" ]; then mv "$work" "$PRESET_WORK" && work=$PRESET_WORK; else trap 'rm -rf "$work"' EXIT; fi
fi
cd "$work"
preset=(-S data.train_size=7473 -S eval_sets.gsm8k.size=1319 -S peft.method=rslora
  -S 'lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]'
  -S train.epochs=3 -S train.learning_rate=1e-3 -S train.micro_batch_size=32 -S eval_sets.svamp.size=1000)
command=(dvc exp run -S "model.name=$model" -S "data.source=$data" -S "eval_sets.svamp.source=$svamp" "${preset[@]}"
  "$@")
status=0
run_logged "$out/exp_run.log" "${command[@]}" || status=$?
cp params.yaml dvc.lock "$out/" 2>/dev/null || true
cp reports/comparison.md "$out/" 2>/dev/null || true
pack_run "$out"
record_versions "$out/versions.txt"
exit "$status"
