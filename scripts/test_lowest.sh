#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows for the helpers' own dependencies
# (what an older Colab or conda environment may have) into .venv-lowest/ and run the
# helper tests there, so the declared minimums stay true. CI runs it after the suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "==> helper tests against the lowest declared versions (.venv-lowest)"
"$UV" venv --quiet --allow-existing --python "$(cat .python-version)" .venv-lowest
"$UV" pip install --quiet --python .venv-lowest/bin/python --resolution lowest-direct \
    -e . "pytest>=8.0" "ipython>=8.0"
.venv-lowest/bin/python -c "import torch, torchvision, numpy; print('    torch', torch.__version__, '| torchvision', torchvision.__version__, '| numpy', numpy.__version__)"
.venv-lowest/bin/python -m pytest -q -p no:cacheprovider tests \
    --ignore=tests/browser --ignore=tests/test_project.py --ignore=tests/test_build_book.py
