#!/usr/bin/env bash
# Install wsl with its dev extras into .venv (created if missing) and run the tests.
#   scripts/test.sh [pytest args...]
# Data sets are found through WSL_DATA_DIR (CI points it at ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"
if [ -n "${WSL_DATA_DIR:-}" ]; then
  WSL_DATA_DIR="$(cd "$WSL_DATA_DIR" && pwd)"
  export WSL_DATA_DIR
fi
exec .venv/bin/python -m pytest "$@"
