#!/usr/bin/env bash
# Install scilm and its dependencies into the current Python environment.
# PyTorch comes first, as the CPU build where there is no NVIDIA GPU: an unpinned `torch` from
# the package index is the multi-GB CUDA build. scilm's own requirement (torch>=2.4) is then
# already satisfied, so pip installs nothing more for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${SCILM_TORCH_VERSION:-2.13.0}

if "$PY" -c "import torch" 2>/dev/null; then
  echo "scilm install: using the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${TORCH_VERSION}"
else
  # A local CPU wheel if pip can see one, else PyTorch's own CPU index.
  "$PY" -m pip install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || "$PY" -m pip install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
fi
# pip's own status, not grep's (grep -v exits 1 when pip printed nothing): a failed install is said
pip_status=0
pip_out=$("$PY" -m pip install -q -e ".[all]" 2>&1) || pip_status=$?
printf '%s\n' "$pip_out" | grep -v -e "Running pip as the 'root' user" -e "^$" || true
if [ "$pip_status" -ne 0 ]; then
  echo "scilm install: WARNING: 'pip install -e .[all]' exited $pip_status (see above); some extras may be missing" >&2
fi
"$PY" -c "import scilm, torch; print(f'scilm install: ok (torch {torch.__version__}, cuda={torch.cuda.is_available()})')"
