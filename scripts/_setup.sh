# Sourced by scripts/book.sh and scripts/test.sh: install the pinned uv into .tools/
# (once), then create or update .venv with exactly the versions in uv.lock.
# Needs only python3 (3.11 or newer) with its venv module (Debian and Ubuntu: the
# python3-venv package); uv fetches everything else from PyPI. uv resolves torch and torchvision from the registry, never from a local
# wheel folder, so the pair always matches.
set -euo pipefail
if ! python3 -c "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
    echo "error: these scripts need python3 >= 3.11 with its venv module (Debian/Ubuntu: apt install python3-venv)" >&2
    exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# uv's version is pinned in one place, pyproject.toml's [tool.uv] required-version.
UV_VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["uv"]["required-version"].removeprefix("=="))')
UV=.tools/uv/bin/uv
if [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    echo "==> installing uv $UV_VERSION into .tools/uv"
    python3 -m venv .tools/uv
    .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
echo "==> syncing .venv with uv.lock"
# --compile-bytecode writes every module's .pyc at install time. Without it, where
# PYTHONDONTWRITEBYTECODE is set (as on many CI machines), every new process compiles
# torch's Python sources again: about 3 s more per `import torch`, and chapter 09
# starts more than a dozen processes. uv skips the step when nothing changed.
"$UV" sync --locked --quiet --compile-bytecode
