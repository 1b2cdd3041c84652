#!/usr/bin/env bash
# Install everything, execute every chapter once (with nbmake, as tests), build the
# static HTML book from those executed notebooks and print it into one PDF. Open
# _build/html/index.html after; the PDF is _build/pdf/pytorch-book.pdf.
# A chapter is re-executed only when it, the helpers or uv.lock changed since its last
# run; pass --fresh (CI sets CI=true, which does the same) to execute everything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
source scripts/_system.sh
need_chromium
"$UV" run --locked python scripts/build_book.py "$@"
"$UV" run --locked python scripts/check_book.py
echo "==> printing the built pages into one PDF"
"$UV" run --locked python scripts/book_pdf.py
echo "==> done: open _build/html/index.html"
