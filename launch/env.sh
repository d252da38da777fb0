# Sourced by the launch scripts: creates .venv from the requirements files when missing or
# when a requirements file changed since the last install, then activates it.
#   CALM_REQUIREMENTS: the files to install, separated by spaces (default requirements.txt;
#     the tests: requirements-test.txt requirements-seqio.txt)
#   CALM_PYTHON: the interpreter that creates the venv (default python3.11, else python3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
read -r -a requirements <<< "${CALM_REQUIREMENTS:-requirements.txt}"
python="${CALM_PYTHON:-$(command -v python3.11 || command -v python3)}"
venv="$root/.venv"
# One stamp per set of files, holding the digest of requirements.txt (which every other
# file includes) and of each file of the set.
names="$(printf '%s\n' "${requirements[@]}" | xargs -n1 basename | paste -sd+ -)"
stamp="$venv/.installed-$names"
digest="$(cd "$root" && cat requirements.txt "${requirements[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[calm_jax] creating $venv with $("$python" --version)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  echo "[calm_jax] installing ${requirements[*]} into $venv" >&2
  args=()
  for file in "${requirements[@]}"; do args+=(-r "$root/$file"); done
  "$venv/bin/python" -m pip install --quiet "${args[@]}"
  echo "$digest" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
