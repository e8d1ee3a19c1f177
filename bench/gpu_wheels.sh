#!/usr/bin/env bash
# Here, with network to PyPI: fetch bench/gpu-wheels.txt as Python 3.12 manylinux wheels into .whl/
# (git ignores it), for the lent GPU machine, which can fetch nothing (docs/performance.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
grep -v '^#' bench/gpu-wheels.txt | grep . | while read -r wheel; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$wheel"
done
du -sh .whl
