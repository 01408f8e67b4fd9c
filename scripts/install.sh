#!/usr/bin/env bash
# Install sdplay's Python packages from a requirements file (default requirements.txt) on a fresh machine.
# torch first: an existing install is kept (GPU users bring their CUDA build); else 2.13.0, which pip takes
# from a local wheel where one is provided, and any 2.10+ otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python -m pip install -q --disable-pip-version-check "$@"; }
python -c "import torch" 2>/dev/null || pip "torch==2.13.0" || pip "torch>=2.10"
pip -r "${1:-requirements.txt}"
