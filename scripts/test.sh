#!/usr/bin/env bash
# Sets up everything the test suite needs (optzoo in .venv, MXNet oracles) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-oracle.sh
export OPTZOO_REQUIRE_ORACLE=1   # a missing MXNet oracle is a failure here, not a skip
exec .venv/bin/python -m pytest -q "$@"
