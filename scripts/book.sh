#!/usr/bin/env bash
# Install everything, execute every chapter and build the static HTML book.
# Open _build/html/index.html when it finishes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "==> building the book (executes every chapter)"
# --all: rebuild every page, so every chapter is executed afresh. -W: any warning fails
# the build; _config.yml also makes a failing cell fail it.
"$UV" run --locked jupyter-book build book --config _config.yml --path-output . --all -W --keep-going
"$UV" run --locked python scripts/check_book.py
echo "==> done: open _build/html/index.html"
