#!/usr/bin/env bash
# make testinstalled: what a user gets from PyPI, tested the way a user would run it.
#   1. python -m build: the sdist, then the wheel built from that sdist (a file missing
#      from MANIFEST.in fails here or in the tests, not after release);
#   2. a fresh venv under /tmp with the wheel and its [test] extra;
#   3. the serve CLI, the doctor and a smoke request from the installed package;
#   4. the suite shipped in the sdist, run in a copy of the sdist without src/.
# PY picks the interpreter; PYTEST_ARGS are passed to pytest (e.g. -x -m "not slow").
set -euo pipefail
PY="${PY:-python3}"
src="$(cd "$(dirname "$0")/.." && pwd)"
work="${TESTINSTALLED_DIR:-/tmp/fastc1k-testinstalled}"
rm -rf "$work"
mkdir -p "$work/dist" "$work/run"

echo "== build: sdist, then the wheel from the sdist"
"$PY" -m build --outdir "$work/dist" "$src"
sdist="$(ls "$work"/dist/*.tar.gz)"
wheel="$(ls "$work"/dist/*.whl)"
echo "   $sdist"; echo "   $wheel"

echo "== venv"
"$PY" -m venv "$work/venv"
vpy="$work/venv/bin/python"
"$vpy" -m pip install -q --upgrade pip
"$vpy" -m pip install -q "${wheel}[test]"

cd "$work/run"   # the sdist without src/: its tests and files, nothing importable
tar -xzf "$sdist" --strip-components=1 --exclude='*/src'
"$vpy" - <<'PY'
import fastc1k, sys
assert "site-packages" in fastc1k.__file__, f"imported from {fastc1k.__file__}, not the venv"
print(f"== installed: {fastc1k.__file__}; C engine built: {fastc1k.c_available()}")
PY
"$vpy" -m fastc1k.serve --help >/dev/null && echo "== python -m fastc1k.serve --help: ok"
"$vpy" -m fastc1k.doctor >/dev/null && echo "== python -m fastc1k.doctor: ok"
"$vpy" scripts/smoke.py

echo "== the suite from the sdist, against the installed package"
args=()
eval "args=(${PYTEST_ARGS:-})"  # shell words, quotes kept: PYTEST_ARGS='-m "not slow"'
"$vpy" -m pytest -p no:cacheprovider "${args[@]}" tests
