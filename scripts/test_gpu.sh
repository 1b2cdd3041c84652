#!/usr/bin/env bash
# Execute every chapter on this machine's NVIDIA GPU with nbmake and record each
# chapter's time and failures (scripts/gpu_run.py; report in _stage/gpu_run.json, shown
# on the Status page of a book built from the same sources). Not part of CI, which has
# no GPU. `--jobs N` executes N chapters at once (default 3).
#
# By default it installs the locked environment with uv, as the README commands do. On a
# machine that cannot reach PyPI, point BOOK_PYTHON at a Python that already has the
# book's dependencies (torch, torchvision, gymnasium, nbmake, pytest-xdist ...): the
# helpers are then imported from this checkout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${BOOK_PYTHON:-}" ]; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    exec "$BOOK_PYTHON" scripts/gpu_run.py "$@"
fi
source scripts/_setup.sh
exec "$UV" run --locked python scripts/gpu_run.py "$@"
