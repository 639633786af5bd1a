#!/usr/bin/env bash
# Start an MLflow tracking server (SQLite backend, local artifacts) in the background,
# on 127.0.0.1 only (it has no auth: reach it from elsewhere through an SSH tunnel).
# usage: scripts/start_mlflow_server.sh [STORE_DIR=results/mlruns] [PORT=5000]
set -euo pipefail
store=$(realpath -m "${1:-results/mlruns}")
port="${2:-5000}"
mkdir -p "$store/artifacts"
nohup mlflow server --backend-store-uri "sqlite:///$store/mlflow.db" \
    --artifacts-destination "$store/artifacts" --host 127.0.0.1 --port "$port" \
    > "$store/server.log" 2>&1 &
echo "MLflow server on http://127.0.0.1:$port (log: $store/server.log)"
echo "use: unlearn run CONFIG --tracking-uri http://localhost:$port"
