#!/usr/bin/env bash
# Install what the app needs, then start it: `bash scripts/start.sh [app.py flags]`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
bash scripts/install.sh requirements.txt
exec python app.py "$@"
