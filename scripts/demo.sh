#!/usr/bin/env bash
# Sets up .venv and runs the main job: `optzoo compare --tune --model mlp,sparse`, every optimizer of the MXNet
# guide at the learning rate its own search picks (same budget for each), on scikit-learn's digits (MLP) and a
# sparse logistic regression; writes a new runs/compare-<date>-<time> (runs/latest links to it).
# Extra arguments go to `optzoo compare` (see `optzoo compare --help`), e.g. --model all to add the CNN.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/optzoo compare --tune --model mlp,sparse "$@"
