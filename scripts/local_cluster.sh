#!/usr/bin/env bash
# A local cluster on 127.0.0.1 in one command: Ray (a head with no CPUs, two worker nodes,
# token auth), SeaweedFS S3 (bucket `unlearn`), PostgreSQL and MLflow (basic auth).
#   eval "$(scripts/local_cluster.sh up)"     # start (or find running); prints export lines only
#   scripts/local_cluster.sh status           # each service up/down and its ports
#   scripts/local_cluster.sh down [--purge]   # stop what `up` started (--purge: delete its data)
# State, logs and the 0600 secret files: $UNLEARN_LOCAL_CLUSTER_DIR, default .local_cluster/.
# The logic lives in pipelines/local_cluster.py (also usable from Python and tests).
set -euo pipefail
# No cd: a relative --dir or $UNLEARN_LOCAL_CLUSTER_DIR stays relative to where you are.
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m pipelines.local_cluster "$@"
