# Sourced by the launch scripts: creates .venv from the requirements files when missing or
# when a requirements file changed since the last install, then activates it.
#   CALM_REQUIREMENTS: which file to install (requirements.txt or requirements-test.txt)
#   CALM_PYTHON: the interpreter that creates the venv (default python3.11, else python3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="${CALM_REQUIREMENTS:-requirements.txt}"
python="${CALM_PYTHON:-$(command -v python3.11 || command -v python3)}"
venv="$root/.venv"
stamp="$venv/.installed-$(basename "$requirements")"
digest="$(cat "$root/requirements.txt" "$root/$requirements" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[calm_jax] creating $venv with $("$python" --version)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "[calm_jax] installing $requirements into $venv" >&2
  "$venv/bin/python" -m pip install --quiet -r "$root/$requirements"
  echo "$digest" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
