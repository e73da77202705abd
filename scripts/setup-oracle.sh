#!/usr/bin/env bash
# Creates the MXNet oracle virtualenvs used by the parity tests:
#   .venv-mxnet    mxnet==2.0.0b1 (the reference for every optimizer)
#   .venv-mxnet19  mxnet==1.9.1   (the reference for the legacy LBSGD / ccSGD names)
# Both need numpy<1.24 and Python 3.11 (MXNet's wheels predate numpy 1.24's removals).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${ORACLE_PYTHON:-$(command -v python3.11 || command -v python3)}
make_env() {  # dir, mxnet version
  local dir=$1 version=$2
  if [ -f "$dir/.ready-$version" ]; then return; fi
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "mxnet==$version" 'numpy<1.24'
  "$dir/bin/python" -c "import mxnet" 2>/dev/null
  touch "$dir/.ready-$version"
}
make_env .venv-mxnet 2.0.0b1
make_env .venv-mxnet19 1.9.1
