#!/usr/bin/env bash
# Stop the control plane that up.sh started; its logs stay in the work directory.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cd "$repo"
exec "$python" -m tests.cluster.controlplane down "$@"
