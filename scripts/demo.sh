#!/usr/bin/env bash
# Sets up .venv and runs the main job: `optzoo compare` on its embedded default (scikit-learn's digits,
# the guide's optimizers). Extra arguments go to `optzoo compare` (see `optzoo compare --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/optzoo compare --out runs/compare "$@"
