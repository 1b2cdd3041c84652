#!/usr/bin/env bash
# Install everything and run the whole test suite: lint, the helper and project tests
# with coverage, every notebook executed once by nbmake while the book is built from
# those outputs, then the built book tested in a real headless browser.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
source scripts/_system.sh
need_chromium
need_slurm
echo "==> ruff: lint and format check"
"$UV" run --locked ruff check .
"$UV" run --locked ruff format --check .
echo "==> pytest: unit tests of the helpers, checkers and project files"
# Two workers: some tests wait on subprocesses (timeouts), so one core would sit idle;
# stealing work keeps the long tests from ending up on one worker.
"$UV" run --locked pytest tests --ignore=tests/browser -m "not integration" -n 2 \
    --dist worksteal --cov=helpers --cov-report=
echo "==> pytest: integration tests (torchrun ranks, a SLURM job, CPU-level probes, ResNet-18)"
# Each starts processes that import torch afresh, or trains a real torchvision network:
# seconds each, so they run after the quick tests. Coverage adds up over both steps.
"$UV" run --locked pytest tests --ignore=tests/browser -m integration -n 2 --dist worksteal \
    --cov=helpers --cov-append --cov-report=term-missing --cov-fail-under=90
echo "==> every chapter under the other vectorised CPU kernel levels this machine can run"
# The book build below runs at the level torch picks by itself; this runs AVX2 and
# AVX-512 where that is another level, and scripts/test_colab.sh the plain level.
# A failure here does not stop the build, so the Status page can show it.
matrix_status=0
"$UV" run --locked python scripts/cpu_matrix.py --skip-native --levels avx2 avx512 --jobs 2 ||
    matrix_status=$?
echo "==> every chapter executed by nbmake, and the book built from those outputs"
bash scripts/book.sh "$@"
echo "==> the built book in headless Chromium"
"$UV" run --locked pytest tests/browser -n 2 --dist loadgroup
if [ "$matrix_status" -ne 0 ]; then
    echo "ERROR: the CPU matrix failed (see above and the Status page)" >&2
    exit "$matrix_status"
fi
