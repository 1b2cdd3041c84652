#!/usr/bin/env bash
# Execute every chapter on Google Colab's stack: Python 3.13 with the package versions
# in scripts/colab_stack.txt, the book's helpers installed the way each chapter's
# Colab cell installs them (`pip install` of this repository, which must keep Colab's
# torch). Those versions are also the book's floor: pyproject.toml's minimums are
# Colab's versions, so this lane is the floor lane too. It also runs the helper tests.
# CI runs it after the README's test command.
#
# Needs a Python 3.13 (uv cannot download one here): $COLAB_PYTHON, pyenv's 3.13, or
# python3.13 on the PATH. Without one it says so and skips; under CI=true it fails.
# With --prepare it only builds and checks the environment (.ci/run does that while the
# test command runs, since installing is mostly downloading and unpacking).
set -euo pipefail
prepare_only=false
case "${1:-}" in
    --prepare) prepare_only=true ;;
    "") ;;
    *) echo "usage: $0 [--prepare]" >&2; exit 2 ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
VENV=.venv-colab
STACK=scripts/colab_stack.txt

find_python() {
    local candidate
    for candidate in "${COLAB_PYTHON:-}" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 \
        "$(command -v python3.13 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != (3, 13))" 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}
PYTHON=$(find_python)
if [ -z "$PYTHON" ]; then
    message="no Python 3.13 found (set COLAB_PYTHON, or install one with pyenv): the Colab lane needs Colab's Python"
    if [ "${CI:-}" = true ]; then
        echo "ERROR: $message" >&2
        exit 1
    fi
    echo "==> SKIPPED: $message"
    exit 0
fi

echo "==> Colab's stack ($STACK) in $VENV, with $("$PYTHON" --version)"
"$UV" venv --quiet --allow-existing --python "$PYTHON" "$VENV"
"$UV" pip install --quiet --compile-bytecode --python "$VENV/bin/python" -r "$STACK"
# The test tools Colab lacks, at uv.lock's versions, without moving Colab's packages.
tools=$("$VENV/bin/python" - <<'PY'
import tomllib
wanted = {"nbmake", "pytest-xdist", "hypothesis"}
packages = tomllib.load(open("uv.lock", "rb"))["package"]
print(" ".join(f"{p['name']}=={p['version']}" for p in packages if p["name"] in wanted))
PY
)
# shellcheck disable=SC2086
"$UV" pip install --quiet --compile-bytecode --python "$VENV/bin/python" -c "$STACK" $tools

echo "==> installing the helpers as a chapter's Colab cell does: pip install of this repository"
"$VENV/bin/python" -m pip uninstall --quiet --yes pytorch-book >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check .
"$VENV/bin/python" scripts/colab_stack.py check "$STACK"
if [ "$prepare_only" = true ]; then
    exit 0
fi

echo "==> helper tests on Colab's stack"
# Run from a copy of the tests, so that `helpers` is the installed package, not ./helpers.
rm -rf _stage/colab && mkdir -p _stage/colab
cp -r tests _stage/colab/tests
cp -r chapters scripts book pyproject.toml .ci _stage/colab/
# Every warning is an error in these tests; on Colab's versions importing matplotlib
# 3.10.0 warns about its own use of pyparsing 3.3's deprecated names.
(cd _stage/colab && "../../$VENV/bin/python" -m pytest -q -p no:cacheprovider tests \
    -n 2 --dist worksteal -W "ignore::pyparsing.warnings.PyparsingDeprecationWarning" \
    --ignore=tests/browser --ignore=tests/test_project.py --ignore=tests/test_build_book.py \
    --ignore=tests/test_notebook_markup.py --ignore=tests/test_cpu_matrix.py \
    --ignore=tests/test_slurm.py)

# The chapters run at the plain C++ kernel level (ATEN_CPU_CAPABILITY=default, with
# MKL's and oneDNN's matching limits): the level of the CPU matrix that scripts/test.sh
# leaves to this lane, so each level is executed once and CI stays within its time.
capability=$(ATEN_CPU_CAPABILITY=default "$VENV/bin/python" -c \
    "import torch; print(torch.backends.cpu.get_cpu_capability())")
if [ "$capability" = DEFAULT ]; then
    echo "==> every chapter on Colab's stack, at the plain CPU kernel level"
    "$UV" run --locked python scripts/cpu_matrix.py --python "$VENV/bin/python" --levels default \
        --jobs 2 --report _stage/cpu_matrix_colab.json
else
    message="torch ignores ATEN_CPU_CAPABILITY here (it reported $capability for 'default')"
    if [ "${CI:-}" = true ]; then
        echo "ERROR: $message" >&2
        exit 1
    fi
    echo "==> every chapter on Colab's stack ($message, so at torch's own level)"
    mkdir -p _stage/colab/run
    cp book/*.ipynb _stage/colab/run/
    (cd _stage/colab && BOOK_PLAIN_PROGRESS=1 "../../$VENV/bin/python" -m pytest \
        -p no:cacheprovider --nbmake --nbmake-timeout=900 --durations=0 run/*.ipynb)
fi
