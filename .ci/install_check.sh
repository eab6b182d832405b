#!/usr/bin/env bash
# Install check (`make install-check`, run by CI): the declared package metadata alone is enough.
# A fresh virtual environment gets only torch and the build tools; `pip install --no-build-isolation -e .`
# of a copy of this tree (no extras) must pull in everything else from pyproject.toml, and then
# `leo --help` and `leo demo --quick` must run and write every output, loss curves included.
# About 4 minutes on 2 busy CPU cores: torch from the local wheel ~20 s, extension build ~1-2 min, demo ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TORCH_SPEC:?set by make install-check}"
BASE_PYTHON=${BASE_PYTHON:-python3}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
# The working tree as git sees it (tracked and untracked, minus ignored files such as .venv and *.so).
git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$tmp/src"
"$BASE_PYTHON" -m venv "$tmp/venv"
pip="$tmp/venv/bin/python -m pip"
$pip install -q "$TORCH_SPEC" "setuptools>=64" wheel ninja
(cd "$tmp/src" && $pip install -q --no-build-isolation -e .)

cd "$tmp"   # away from the source tree: imports come from the installed package only
"$tmp/venv/bin/leo" --help >/dev/null
"$tmp/venv/bin/leo" demo --quick --out "$tmp/demo"
for f in conditional.mp4 long.mp4 edited.mp4 unconditional.mp4 contact_sheet.png loss_curves.png; do
    test -s "$tmp/demo/$f" || { echo "install check: leo demo --quick did not write $f" >&2; exit 1; }
done
echo "install check: ok (fresh venv, declared dependencies only)"
