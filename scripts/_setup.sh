# Sourced by scripts/book.sh and scripts/test.sh: install the pinned uv into .tools/
# (once), then create or update .venv with exactly the versions in uv.lock.
# Needs only python3 (3.11 or newer) with its venv module; uv fetches everything else
# from PyPI. uv resolves torch and torchvision from the registry, never from a local
# wheel folder, so the pair always matches.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.9
UV=.tools/uv/bin/uv
if [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    echo "==> installing uv $UV_VERSION into .tools/uv"
    python3 -m venv .tools/uv
    .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
echo "==> syncing .venv with uv.lock"
"$UV" sync --locked --quiet
