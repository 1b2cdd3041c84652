#!/usr/bin/env bash
# Install everything and run the whole test suite: lint, helper tests with coverage,
# notebook pairing checks, every notebook executed by nbmake, then a build of the book.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "==> ruff: lint and format check"
"$UV" run --locked ruff check .
"$UV" run --locked ruff format --check .
echo "==> pytest: helper and project tests (with coverage), then every notebook (nbmake)"
"$UV" run --locked pytest tests book --nbmake --nbmake-timeout=600 \
    --cov=helpers --cov-report=term-missing --cov-fail-under=90
bash scripts/book.sh
