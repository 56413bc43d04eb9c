# Sourced by the bench scripts that run the pipeline through `dvc exp run` on the lent GPU (gpu_preset.sh,
# gpu_sweep.sh, gpu_rl.sh): a fresh git repository made from the working tree, dvc where the image lacks it, and the versions.

# Bytecode written once, under PYTHONPYCACHEPREFIX (default /tmp/pycache), when MODULE (default torch) has none and
# none would be written: on the lent GPU's image (read-only site-packages, PYTHONDONTWRITEBYTECODE set) every stage
# otherwise compiles again what has no .pyc there: torch, ≈3.4 s a stage on an H100 on 2026-12-07
# (bench/results/repro_2026-12-07c/), and transformers too in the 2026-11-29 image (bench/RESULTS.md runs 6-7).
# Elsewhere it changes nothing.
bytecode_once() {
  local root uncompiled
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  uncompiled=$(PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
    'import sys; from qlora_gsm8k.startup import uncompiled_libraries; print(*uncompiled_libraries(sys.argv[1:]))' \
    "${1:-torch}")
  if [ -n "$uncompiled" ]; then
    export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
    unset PYTHONDONTWRITEBYTECODE
    echo "bytecode: none for $uncompiled here; written once under $PYTHONPYCACHEPREFIX"
  fi
}

# dvc and dvclive from ROOT/.whl when they do not import (the lent GPU's image has neither).
ensure_dvc() {
  export DVC_NO_ANALYTICS=1
  if ! python3 -c "import dvc, dvclive" 2>/dev/null; then
    # Installed by an earlier call on the same warm machine: a later call need not carry .whl again.
    [ -f /tmp/site-dvc/.installed ] || {
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-dvc "$1"/.whl/*.whl &&
        touch /tmp/site-dvc/.installed
    }
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site-dvc" PATH="/tmp/site-dvc/bin:$PATH"
  fi
  bytecode_once
}

# Prints the path of a new git repository holding ROOT's working tree as it is, without what is not the project's
# (the machine's copy may have no git history).
fresh_repo() {
  local work
  work=$(mktemp -d /tmp/bench-repo.XXXXXX)
  (cd "$1" && tar --exclude=./.git --exclude=./.venv --exclude=./.gpusite --exclude=./.bench --exclude='./.whl*' \
    --exclude='./.smol*' --exclude=./.models --exclude=./checkpoints -cf - .) | tar -xf - -C "$work"
  # An identity of its own: DVC commits each experiment, and the lent machine has no git config.
  (cd "$work" && git init -q && git config user.name bench && git config user.email bench@localhost &&
    git add -A && git commit -qm "the tree under test")
  echo "$work"
}

# The GPU (or CPU) and the versions of what ran, into FILE.
record_versions() {
  python3 -c "
import platform, torch
from importlib.metadata import version as v
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU: ' + platform.processor()
print(gpu, 'torch', torch.__version__, *(f'{p} {v(p)}' for p in ('transformers', 'peft', 'bitsandbytes', 'dvc')))
" >"$1"
}

# Runs COMMAND... with its output shown and appended to LOG (the command line first, its rc and wall time last);
# returns its exit status.
run_logged() {
  local log=$1 start=$SECONDS status
  shift
  echo "$ $*" | tee -a "$log"
  set +e
  "$@" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
  echo "$1 $2 $3: rc $status, $((SECONDS - start)) s wall" | tee -a "$log"
  return "$status"
}

# The run's metrics/, reports/ and dvclive/ (and what further tar arguments add) as OUT/run.tgz: the device tool brings back
# only a few files, not too deep, from a call, so a run leaves one archive beside its log rather than a tree of files.
pack_run() {
  local out=$1
  shift
  tar czf "$out/run.tgz" --ignore-failed-read metrics reports dvclive "$@" 2>/dev/null || true
}
