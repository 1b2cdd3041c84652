#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows for the helpers' own dependencies
# (what an older Colab or conda environment may have) into .venv-lowest/ and run the
# helper tests there, so the declared minimums stay true. CI runs it after the suite.
#
# Their own dependencies are resolved as they stood when the newest of those minimums
# was current (gymnasium 1.0, October 2024): an old matplotlib next to a pyparsing
# released a year later is a mix no real environment has, and it only tests the two of
# them against each other.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
AS_OF=2024-11-01
echo "==> helper tests against the lowest declared versions (.venv-lowest, others as of $AS_OF)"
"$UV" venv --quiet --allow-existing --python "$(cat .python-version)" .venv-lowest
printf -- '-e .\npytest>=8.0\nipython>=8.0\nhypothesis>=6.100\n' >.venv-lowest/requirements.in
"$UV" pip compile --quiet --python .venv-lowest/bin/python --resolution lowest-direct \
    --exclude-newer "$AS_OF" --no-header .venv-lowest/requirements.in -o .venv-lowest/requirements.txt
"$UV" pip sync --quiet --compile-bytecode --python .venv-lowest/bin/python .venv-lowest/requirements.txt
.venv-lowest/bin/python -c "import torch, torchvision, numpy; print('    torch', torch.__version__, '| torchvision', torchvision.__version__, '| numpy', numpy.__version__)"
.venv-lowest/bin/python -m pytest -q -p no:cacheprovider tests \
    --ignore=tests/browser --ignore=tests/test_project.py --ignore=tests/test_build_book.py \
    --ignore=tests/test_notebook_markup.py
