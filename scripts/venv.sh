# Sourced by start.sh and test.sh: use the active virtual environment, else .venv/ in the repo (made on first use).
# A venv keeps sdplay's packages apart from the system's, and is what CI builds afresh to prove requirements*.txt.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "sdplay: creating a virtual environment in .venv/ ..."
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
