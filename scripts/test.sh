#!/usr/bin/env bash
# Sets up everything the test suite needs (optzoo in .venv, the MXNet oracles, a headless browser for the
# HTML-report test) and runs it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-oracle.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Debian's chromium lets tests/test_cli.py open the compare report in a real browser.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser check of the HTML report will be skipped"
fi
export OPTZOO_REQUIRE_ORACLE=1   # a missing MXNet oracle is a failure here, not a skip
export OPTZOO_REQUIRE_NATIVE=1   # so are native kernels that fail to build (the machine has g++)
exec .venv/bin/python -m pytest -q "$@"
