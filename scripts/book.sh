#!/usr/bin/env bash
# Install everything, execute every chapter once (with nbmake, as tests) and build the
# static HTML book from those executed notebooks. Open _build/html/index.html after.
# A chapter is re-executed only when it, the helpers or uv.lock changed since its last
# run; pass --fresh (CI sets CI=true, which does the same) to execute everything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
"$UV" run --locked python scripts/build_book.py "$@"
"$UV" run --locked python scripts/check_book.py
echo "==> done: open _build/html/index.html"
