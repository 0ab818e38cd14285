#!/usr/bin/env bash
# One command from a fresh clone: create .venv if missing, install wsl, run the
# quickstart on built-in data (sklearn's digits, offline): a small CNN zoo, then StatNN
# and NG-GNN predicting each CNN's accuracy from its weights; prints a Kendall tau table.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
.venv/bin/python scripts/symmetry_check.py
.venv/bin/python scripts/quickstart.py "$@"
