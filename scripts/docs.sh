#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html, warnings as errors (as CI does).
#   scripts/docs.sh                    build
#   scripts/docs.sh --refresh-images   first redraw docs/_static/trajectories/*.png with `optzoo trajectories`
# Needs the docs tools: .venv/bin/python -m pip install -c constraints.txt -e '.[docs]' (also in '.[test]').
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for arg in "$@"; do
  case "$arg" in
    --refresh-images) "$PY" docs/_tools/trajectory_images.py ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "scripts/docs.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
exec "$PY" -m sphinx -W --keep-going -b html docs docs/_build/html
