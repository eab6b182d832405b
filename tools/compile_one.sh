#!/usr/bin/env bash
# Syntax/type-check one C++ source against torch's headers without touching the shared build.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
INC=$($PY -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
PYINC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
g++ -std=c++20 -fsyntax-only -fopenmp -Icsrc $INC -I$PYINC "$@"
