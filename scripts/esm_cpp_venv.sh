#!/usr/bin/env bash
# A separate virtual environment with esm.cpp (PyPI esm-cpp), the C++ ESM-2 engine `scilm bench inference`
# compares against. esm-cpp 0.2.1 requires numpy<2, which scilm's environment does not have, hence its own venv.
# Usage: bash scripts/esm_cpp_venv.sh [DIR]   (default .venv-esm-cpp); then
#        scilm bench inference --esm-cpp-python DIR/bin/python ...
set -euo pipefail
DIR=${1:-.venv-esm-cpp}
PY=${PYTHON:-python3}
"$PY" -m venv "$DIR"
"$DIR/bin/python" -m pip install -q "esm-cpp==0.2.1" "numpy<2"
"$DIR/bin/python" -c "import esm_cpp; print(f'esm.cpp {esm_cpp.__version__}: ISA {esm_cpp.current_isa()}; python: $DIR/bin/python')"
