#!/usr/bin/env bash
# Install sdplay's Python packages from a requirements file (default requirements.txt) into the current Python.
# torch first: an existing install is kept (GPU users bring their CUDA build); else 2.13.0, which pip takes
# from a local wheel where one is provided, and any 2.10+ otherwise. A stamp of the requirements files skips pip
# when nothing changed since the last install, so a second start is immediate.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
stamp="$(python -c 'import sys; print(sys.prefix)')/.sdplay-installed-$(basename "$requirements" .txt)"
digest="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
  exit 0
fi
pip() { python -m pip install -q --disable-pip-version-check "$@"; }
if ! python -c "import torch" 2>/dev/null; then
  echo "sdplay: installing PyTorch (first run only; about a minute from a local wheel, longer from PyPI) ..."
  pip "torch==2.13.0" 2>/dev/null || pip "torch>=2.10"
fi
echo "sdplay: installing $requirements (diffusers, transformers, gradio, ...; first run only) ..."
start=$SECONDS
pip -r "$requirements"
echo "sdplay: packages ready in $((SECONDS - start)) s."
echo "$digest" > "$stamp"
