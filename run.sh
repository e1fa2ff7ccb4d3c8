#!/usr/bin/env bash
# Set-up and entry point for a fresh machine:
#   ./run.sh demo [DIR]   create/reuse .venv, install, run the demo (default output: demo-out/)
#   ./run.sh test [ARGS]  create/reuse .venv, install with test extras, run the test suite
# The constraints file pins torch==2.13.0, so pip keeps the CPU build on CPU machines (and takes the CUDA build
# of the same version on a GPU machine) and no dependency can pull another torch.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

ensure_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
      || { echo "error: Python >= 3.10 is needed (found $("$PYTHON" --version)); set PYTHON=python3.11" >&2; exit 2; }
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when the dependency files changed since the last install.
  local stamp
  stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
    echo "$stamp" > "$VENV/.installed"
  fi
}

case "${1:-}" in
  demo)
    ensure_env
    exec "$VENV/bin/cityscapes-lab" demo --out "${2:-demo-out}"
    ;;
  test)
    ensure_env
    shift
    export HF_HUB_OFFLINE=1
    exec "$VENV/bin/python" -m pytest -n 2 "$@"
    ;;
  *)
    echo "usage: ./run.sh demo [DIR] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
