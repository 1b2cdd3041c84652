#!/usr/bin/env bash
# Install everything (uv into .tools/, the locked environment into .venv/) and stop:
# no chapter is executed. Then `.tools/uv/bin/uv run jupyter lab` opens the notebooks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "==> installed: start JupyterLab with  .tools/uv/bin/uv run jupyter lab"
