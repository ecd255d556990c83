#!/usr/bin/env bash
# Set up xianliao in ./.venv and run it.
#   bash run.sh         set up, train a small model if there is none, then chat
#                       (the Telegram bot when TELEGRAM_BOT_TOKEN is set, else the terminal)
#   bash run.sh test    set up with the dev tools and run the test suite
#   bash run.sh ARGS    set up, then run 'xianliao ARGS'
# PyTorch: the CPU build is installed unless TORCH_INDEX_URL names another PyTorch wheel index,
# e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 for CUDA 12.6.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "run.sh: installing PyTorch (CPU build) into .venv; this takes a minute or two" >&2
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VPY" -m pip install --quiet torch --index-url "$TORCH_INDEX_URL"
  elif "$VPY" -m pip install --quiet --no-index --no-deps "torch>=2.4" 2>/dev/null; then
    # A local wheel (pip's find-links), as this project's CI machine provides; its own
    # dependencies come from the configured package index.
    "$VPY" -m pip install --quiet "torch>=2.4"
  elif "$VPY" -m pip install --quiet --only-binary=:all: --timeout 20 --retries 1 "torch>=2.4" \
         --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
    :  # the CPU build from PyTorch's own index
  else
    # No access to PyTorch's index: take torch from the configured package index.
    "$VPY" -m pip install --quiet "torch>=2.4"
  fi
fi
extras="fast,console"  # console: the admin web console's web stack (xianliao console)
if [ "${1:-}" = "test" ]; then extras="dev"; fi
stamp=".venv/.installed-$extras-$(cksum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  echo "run.sh: installing xianliao and its dependencies ($extras) into .venv" >&2
  "$VPY" -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
if [ "${1:-}" = "test" ]; then
  shift
  exec "$VPY" -m pytest "$@"
fi
if [ $# -eq 0 ]; then
  exec .venv/bin/xianliao quickstart
fi
exec .venv/bin/xianliao "$@"
