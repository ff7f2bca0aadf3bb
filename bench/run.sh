#!/usr/bin/env bash
# The benchmark suite from any directory: bench/suite.py with the project's Python ($PYTHON, else
# python3), arguments passed through (bench/run.sh --quick, bench/run.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/suite.py "$@"
