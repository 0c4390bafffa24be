#!/usr/bin/env bash
# Build the cp310-abi3 manylinux wheel (scripts/build-wheel.sh), check it with
# `auditwheel show`, then install that one file into a fresh virtualenv of
# each CPython from 3.10 to 3.13 (pyenv) with no C compiler reachable, and
# check in each that stek.install() serves resumptions with the compiled
# callback (scripts/wheel_smoke.py).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
pythons=()
for minor in 3.10 3.11 3.12 3.13; do
    interp=$(ls -d "$root"/versions/"$minor".*/bin/python 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$interp" ]; then
        echo "check-wheel: Python $minor is not under $root/versions" >&2
        exit 1
    fi
    pythons+=("$interp")
done

# Built with the newest CPython's headers, installed into the oldest too: an
# abi3 build must not depend on what its headers' version means by a format.
export STEK_WHEEL_TOOLS="$work/tools"
wheel=$(PYTHON=${pythons[-1]} scripts/build-wheel.sh "$work/dist" | tail -n 1)
echo "=== wheel: $(basename "$wheel")"
show=$("$STEK_WHEEL_TOOLS/bin/auditwheel" show "$wheel")
echo "$show"
if ! echo "$show" | tr -d '\n' | grep -q 'is consistent with the following platform tag: *"manylinux_2_17_x86_64"'; then
    echo "check-wheel: auditwheel does not find the wheel manylinux_2_17 consistent" >&2
    exit 1
fi

for interp in "${pythons[@]}"; do
    minor=$("$interp" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv="$work/venv-$minor"
    "$interp" -m venv "$venv"
    # The dependencies from the registry, as wheels only.
    "$venv/bin/python" -m pip install -q --only-binary=:all: \
        'cryptography>=42' 'click>=8.1' 'prometheus-client>=0.20' 'asn1crypto>=1.5'
    # stek itself: that one file, with no compiler reachable.
    env -u PYTHONPATH CC=/bin/false CXX=/bin/false LDSHARED=/bin/false PATH="$venv/bin" \
        "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
        --only-binary=:all: "$wheel"
    (cd "$work" && env -u PYTHONPATH PATH="$venv/bin" \
        "$venv/bin/python" "$here/scripts/wheel_smoke.py")
done
echo "=== check-wheel: $((SECONDS - start)) s"
