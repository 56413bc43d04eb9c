#!/usr/bin/env bash
# The README's full-split preset on a real model through `dvc exp run`, SVAMP on, in a fresh git repository made from
# this working tree (issue 30 item 1: the preset's figures from the command printed beside them). Writes to OUT what
# bench/results/ keeps of it: params.yaml, dvc.lock, metrics/ (every file), comparison.md, exp_run.log, versions.txt.
#
#   bash bench/gpu_preset.sh OUT MODEL GSM8K_DIR SVAMP_JSON [-S KEY=VALUE ...]
#
# MODEL: e.g. the GGUF of tools/fetch-smollm2.sh. Extra -S settings go after the preset's (a CPU dry run shrinks it:
# -S data.train_size=16 ...). On the lent H200, run it in the call after `bash bench/gpu_peers.sh smollm2` (GGUF in
# /tmp/smol, bitsandbytes/datasets/liger in /tmp/site and /tmp/gpusite) and carry .whl (dvc, dvclive): the script
# installs them when they do not import.
set -euo pipefail
out=${1:?usage: bench/gpu_preset.sh OUT MODEL GSM8K_DIR SVAMP_JSON [-S KEY=VALUE ...]}
model=${2:?MODEL}; [ -e "$model" ] && model=$(realpath "$model"); data=$(realpath "${3:?GSM8K_DIR}") svamp=$(realpath "${4:?SVAMP_JSON}")
shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(realpath "$out")
export DVC_NO_ANALYTICS=1
if ! python3 -c "import dvc, dvclive" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-dvc "$root"/.whl/*.whl
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site-dvc" PATH="/tmp/site-dvc/bin:$PATH"
fi
work=$(mktemp -d /tmp/preset.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The working tree as it is, without what is not the project's (the machine's copy may have no git history).
(cd "$root" && tar --exclude=./.git --exclude=./.venv --exclude=./.gpusite --exclude=./.bench --exclude='./.whl*' \
  --exclude='./.smol*' --exclude=./.models --exclude=./checkpoints -cf - .) | tar -xf - -C "$work"
cd "$work"
git init -q
git add -A
git -c user.name=bench -c user.email=bench@localhost commit -qm "the tree under test"
preset=(-S data.train_size=7473 -S eval_sets.gsm8k.size=1319 -S peft.method=rslora
  -S 'lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]'
  -S train.epochs=3 -S train.learning_rate=1e-3 -S train.micro_batch_size=32 -S eval_sets.svamp.size=1000)
command=(dvc exp run -S "model.name=$model" -S "data.source=$data" -S "eval_sets.svamp.source=$svamp" "${preset[@]}"
  "$@")
echo "$ ${command[*]}" | tee "$out/exp_run.log"
start=$SECONDS
set +e
"${command[@]}" 2>&1 | tee -a "$out/exp_run.log"
status=${PIPESTATUS[0]}
set -e
echo "dvc exp run: rc $status, $((SECONDS - start)) s wall" | tee -a "$out/exp_run.log"
cp params.yaml dvc.lock "$out/" 2>/dev/null || true
mkdir -p "$out/metrics" && cp -r metrics/. "$out/metrics/" 2>/dev/null || true
cp reports/comparison.md "$out/" 2>/dev/null || true
python3 -c "
import platform, torch
from importlib.metadata import version as v
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU: ' + platform.processor()
print(gpu, 'torch', torch.__version__, *(f'{p} {v(p)}' for p in ('transformers', 'peft', 'bitsandbytes', 'dvc')))
" >"$out/versions.txt"
exit "$status"
