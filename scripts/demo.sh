#!/usr/bin/env bash
# Sets up .venv and runs the main job: `optzoo compare --tune`, every optimizer of the MXNet guide at the learning
# rate its own search picks (same budget for each), on scikit-learn's digits (MLP and CNN) and a sparse logistic
# regression, on every usable core (--jobs); writes a new runs/compare-<date>-<time> (runs/latest links to it).
# Extra arguments go to `optzoo compare` (see `optzoo compare --help`), e.g. --model mlp,sparse for a shorter run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cli
exec .venv/bin/optzoo compare --tune "$@"
