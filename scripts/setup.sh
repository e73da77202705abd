#!/usr/bin/env bash
# Creates .venv with optzoo (editable) and the CPU build of torch, with an extra of optzoo's (default: test, the
# test tools; demo.sh asks for cli, what the command line needs).
#   bash scripts/setup.sh [EXTRA]
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRA=${1:-test}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$EXTRA]"
