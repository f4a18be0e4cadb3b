#!/usr/bin/env bash
# Start a local control plane (building its binaries on first use) and print how to use it.
# State, logs and the kubeconfig go to ${STUDBOOK_CLUSTER_DIR:-/tmp/studbook-dev-cluster}.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cd "$repo"
exec "$python" -m tests.cluster.controlplane up "$@"
