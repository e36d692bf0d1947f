# Sourced by scripts/demo, scripts/test and scripts/bench: make .venv if it is missing and
# install the project into it (with the extras named in $VENV_EXTRAS, if any). Needs only Python 3.11+.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
if [ -z "$PY" ]; then echo "Error: Python 3.11 or newer is needed (set PYTHON=/path/to/python)" >&2; exit 2; fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
extras="${VENV_EXTRAS:-}"
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c 'import retention, journal' || { echo "Error: installing into .venv failed" >&2; exit 2; }
  touch "$stamp"
fi
