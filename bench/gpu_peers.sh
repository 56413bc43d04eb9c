#!/usr/bin/env bash
# bench/peers.py on the lent H200, in device calls of at most 10 minutes (bench/PEERS.md has the calls in order).
#
#   bash bench/gpu_peers.sh prepare [GGUF]   # here, once: builds .bench/peers-kit, .bench/peers-smol-{a,b,…}
#   bash bench/gpu_peers.sh setup            # GPU: only install the kit and stage the GGUF part carried
#   bash bench/gpu_peers.sh tinyllama        # GPU: TinyLlama-1.1B arch, 2,000 GSM8K train rows, --no-eval
#   bash bench/gpu_peers.sh smollm2          # GPU: SmolLM2-135M-Instruct, full train split, full test set
#   bash bench/gpu_peers.sh gguf             # GPU: setup, and the GGUF put together in /tmp/smol (other scripts)
#
# The H200 image lacks bitsandbytes, datasets, gguf, liger-kernel, trl and unsloth, and a call carries at most
# 64 MiB with the working tree. `prepare` packs what the runs need into .bench/peers-kit (~22 MiB: .gpusite as
# tar.xz, trl/unsloth wheels from .whl2, gguf/liger-kernel/pydantic wheels from .whl, Unsloth's version pins,
# GSM8K and the Llama-2 tokenizer) and SmolLM2's GGUF, xz-compressed, in as many parts as the calls need
# (bench/gguf_parts.py: .bench/peers-smol-a with the kit in the first call, .bench/peers-smol-b alone in the next;
# with the full kit, Unsloth's included, a third, .bench/peers-smol-c: then `setup` carries -b, `gguf` -c).
# On the machine, everything lands in /tmp, which survives back-to-back calls while the machine stays warm
# (30 s after a call): installs in /tmp/site (+ Unsloth's pins in /tmp/site-unsloth, first on PYTHONPATH for
# the unsloth process only), GGUF parts in /tmp/smol, results in /tmp/peers/<model>, reused by the next call
# (peers.py --reuse). Each call copies peers.json, peers.md, peers_loss.png and logs.tar.gz to $OUT/<model>.
# PEERS_SYSTEMS (default: peers.py's list): the systems to run, comma-separated, in that order.
# PEERS_BUDGET_S (default 570): this call's seconds; no new system starts when its expected length would
# overrun it, and the script ends with what ran.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kit=.bench/peers-kit
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gguf_name=SmolLM2-135M-Instruct.Q4_1.gguf
started=$SECONDS
command=${1:-}

prepare() {
  for d in .gpusite .whl .whl2/unsloth-pins; do
    [ -d "$d" ] || { echo "no $d: run bash ../shared/gpu/make-gpusite.sh, then python3 ../shared/gpu/wheels.py"; exit 2; }
  done
  rm -rf "$kit" .bench/peers-smol-?
  mkdir -p "$kit/whl" "$kit/unsloth-pins"
  cp .whl2/*.whl "$kit/whl/"
  cp .whl2/unsloth-pins/*.whl "$kit/unsloth-pins/"
  # PEERS_NO_UNSLOTH=1: a kit without Unsloth and what only it needs (~9 MiB), for calls that run ours and TRL only
  # (the pipeline's rl stage included) when the GGUF and a grown working tree no longer fit two calls beside it.
  if [ "${PEERS_NO_UNSLOTH:-0}" = 1 ]; then
    rm -f "$kit"/whl/unsloth*.whl "$kit"/whl/hf_transfer-*.whl "$kit"/whl/tyro-*.whl "$kit"/whl/msgspec-*.whl \
      "$kit"/whl/structlog-*.whl "$kit"/unsloth-pins/*.whl
  fi
  # From .whl only what these runs import: gguf (transformers reads the GGUF), liger-kernel (ours, trl-tuned),
  # pydantic and its needs (unsloth); dvc and dvclive stay behind.
  for name in gguf liger_kernel pydantic pydantic_core annotated_types typing_inspection; do
    cp .whl/"$name"-[0-9]*.whl "$kit/whl/"
  done
  cp ../shared/data/llama2-tokenizer/tokenizer.model "$kit/"
  gguf=${1:-}
  if [ -z "$gguf" ]; then
    [ -f .smol1/part ] && [ -f .smol2/part ] || bash ../shared/gpu/smollm2-parts.sh
    gguf=$(mktemp) && cat .smol1/part .smol2/part > "$gguf"
  fi
  echo "$gguf_sha  $gguf" | sha256sum -c --quiet
  tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null || true) | awk '{s+=$1} END {print s}')
  python3 - "$kit" "$gguf" "$tree_bytes" <<'EOF'
import lzma, sys, tarfile
from pathlib import Path
kit, gguf, tree = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for name, source in (("gpusite.tar.xz", ".gpusite"), ("gsm8k.tar.xz", "../shared/data/gsm8k")):
    with tarfile.open(kit / name, "w:xz") as tar:
        tar.add(source, arcname=Path(source).name)
packed = lzma.compress(Path(gguf).read_bytes(), preset=9 | lzma.PRESET_EXTREME)
size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
room = 62 * 2**20 - tree  # 64 MiB a call, less the working tree, less 2 MiB of slack for the tree growing
sys.path.insert(0, "bench")
from gguf_parts import split
folders = split(packed, Path(".bench/peers-smol"), room - size(kit), room)
mib = lambda n: f"{n / 2**20:.1f} MiB"
calls = [f".bench/peers-kit ({mib(size(kit))}) + {folders[0]} ({mib(size(folders[0]))})"]
calls += [f"{folder} ({mib(size(folder))})" for folder in folders[1:]]
print(f"working tree {mib(tree)}, GGUF.xz {mib(len(packed))}; " + "; ".join(
    f"call {number} carries {carried}" for number, carried in enumerate(calls, start=1)))
EOF
  du -sh "$kit" .bench/peers-smol-?
}

elapsed() { echo $((SECONDS - started)); }

assemble_gguf() {
  if [ ! -f "/tmp/smol/$gguf_name" ]; then
    python3 bench/gguf_parts.py join /tmp/smol "/tmp/smol/$gguf_name" || exit 4
    echo "$gguf_sha  /tmp/smol/$gguf_name" | sha256sum -c --quiet
  fi
}

setup_machine() {
  if [ ! -f /tmp/site/.peers-installed ]; then
    [ -d "$kit" ] || { echo "no /tmp/site and no $kit: a fresh machine; start again with the call that carries the kit"; exit 3; }
    echo "installing the kit into /tmp/site, /tmp/site-unsloth, /tmp/gpusite"
    rm -rf /tmp/site /tmp/site-unsloth /tmp/gpusite /tmp/peers-data
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$kit"/whl/*.whl
    if compgen -G "$kit/unsloth-pins/*.whl" >/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-unsloth \
        "$kit"/unsloth-pins/*.whl
    fi
    mkdir -p /tmp/gpusite /tmp/peers-data
    python3 -c "import sys, tarfile; [tarfile.open(f).extractall(d, filter='data') for f, d in zip(sys.argv[1::2], sys.argv[2::2])]" \
      "$kit/gpusite.tar.xz" /tmp/gpusite "$kit/gsm8k.tar.xz" /tmp/peers-data
    cp "$kit/tokenizer.model" /tmp/peers-data/
    # bytecode once here, not in each of the eight processes that import trl, unsloth and datasets
    python3 -m compileall -q -j 0 /tmp/site /tmp/site-unsloth /tmp/gpusite >/dev/null || true
    touch /tmp/site/.peers-installed
  fi
  export PYTHONPATH="/tmp/site:/tmp/gpusite/.gpusite${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false
  export UNSLOTH_COMPILE_LOCATION=/tmp/unsloth_compiled_cache  # shared by both models' Unsloth runs
  mkdir -p /tmp/smol
  for folder in .bench/peers-smol-?; do
    if [ -f "$folder/part" ]; then cp "$folder/part" "/tmp/smol/part-${folder##*-}" && cp "$folder/count" /tmp/smol/; fi
  done
  python3 -c "
from importlib.metadata import PackageNotFoundError, version
import torch
def v(p):
    try:
        return version(p)
    except PackageNotFoundError:
        return 'not installed'
print('torch', torch.__version__, torch.cuda.get_device_name(), *(f'{p} {v(p)}' for p in ('transformers', 'peft', 'bitsandbytes', 'trl', 'datasets', 'liger-kernel', 'unsloth')))"
  echo "setup done at $(elapsed) s"
}

# Copies /tmp/peers/<model>'s tables and logs into $OUT/<model> (at most 8 files come back from a call).
copy_out() {
  local from=/tmp/peers/$1 to=${OUT:-/tmp/out}/$1
  mkdir -p "$to"
  for f in peers.json peers.md peers_loss.png; do [ -f "$from/$f" ] && cp "$from/$f" "$to/"; done
  (cd "$from" && find . -mindepth 2 -maxdepth 2 \( -name '*.log' -o -name train.json -o -name eval.json \
    -o -name generations.jsonl \) -print0 | tar -czf "$to/logs.tar.gz" --null -T -) || true
}

# peers.py for one model: no new system starts after $stop s, and `timeout` ends it (it writes what ran) before
# the call's limit.
peers() {
  local model=$1 longest=$2
  shift 2
  local budget=${PEERS_BUDGET_S:-570}
  local left=$((budget - $(elapsed)))
  local stop=$((left - longest))
  if [ "$stop" -le 0 ]; then echo "no time left in this call for $model ($left s)"; return 0; fi
  timeout --signal=TERM $((left - 15)) python3 bench/peers.py --out "/tmp/peers/$model" --reuse --stop-after "$stop" \
    ${PEERS_SYSTEMS:+--systems "$PEERS_SYSTEMS"} --unsloth-pythonpath /tmp/site-unsloth --data /tmp/peers-data/gsm8k "$@" || echo "peers.py exited $?"
  copy_out "$model"
}

case "$command" in
  prepare)
    shift
    prepare "$@"
    ;;
  setup)
    setup_machine
    ;;
  tinyllama)
    setup_machine
    # A TinyLlama system takes ~1-2 min (its 2.2 GB load; Unsloth also compiles); training itself is seconds.
    peers tinyllama 150 --tinyllama-arch /tmp/peers-data/tokenizer.model --train-rows 2000 --no-eval
    ;;
  gguf)  # setup, and the GGUF put together in /tmp/smol from the two calls' parts, for other bench scripts
    setup_machine
    assemble_gguf
    ;;
  smollm2)
    setup_machine
    assemble_gguf
    # A system's training on the full split takes ~2-3 min; the four evaluations run side by side (~3 min).
    peers smollm2 200 --gguf "/tmp/smol/$gguf_name" --eval-parallel 4
    ;;
  *)
    echo "usage: bash bench/gpu_peers.sh prepare [GGUF] | setup | tinyllama | smollm2"
    exit 2
    ;;
esac
echo "gpu_peers.sh $command: done at $(elapsed) s"
