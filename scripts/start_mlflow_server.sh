#!/usr/bin/env bash
# Start an MLflow tracking server (SQLite backend, local artifacts) in the background.
# usage: scripts/start_mlflow_server.sh [STORE_DIR=results/mlruns] [PORT=5000] [HOST=127.0.0.1]
# On 127.0.0.1 (the default) it has no auth: reach it from elsewhere through an SSH tunnel
# (`ssh -L 5000:127.0.0.1:5000 HOST`). Any other HOST turns on MLflow's basic-auth app and
# needs the admin password in MLFLOW_AUTH_ADMIN_PASSWORD (clients then set
# MLFLOW_TRACKING_USERNAME=admin and MLFLOW_TRACKING_PASSWORD). For PostgreSQL + S3 + auth on
# one machine, see scripts/local_cluster.sh.
set -euo pipefail
store=$(realpath -m "${1:-results/mlruns}")
port="${2:-5000}"
host="${3:-127.0.0.1}"
mkdir -p "$store/artifacts"
args=(--backend-store-uri "sqlite:///$store/mlflow.db" --artifacts-destination "$store/artifacts"
      --host "$host" --port "$port")
case "$host" in
    127.0.0.1|localhost)
        # MLflow's host-header check: loopback names only (any port: an SSH tunnel's)
        args+=(--allowed-hosts "127.0.0.1:*,localhost:*,127.0.0.1,localhost") ;;
    *)
        if [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
            echo "refusing to listen on $host without auth: set MLFLOW_AUTH_ADMIN_PASSWORD" >&2
            exit 2
        fi
        auth="$store/basic_auth.ini"
        (umask 077; printf '%s\n' "[mlflow]" "default_permission = NO_PERMISSIONS" \
            "database_uri = sqlite:///$store/basic_auth.db" "admin_username = admin" \
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
            > "$auth")
        export MLFLOW_AUTH_CONFIG_PATH="$auth"
        # CSRF key for the auth app's forms: from the environment, never on a command line
        MLFLOW_FLASK_SERVER_SECRET_KEY="${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(
            python -c 'import secrets; print(secrets.token_hex(32))')}"
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        args+=(--app-name basic-auth)
        # Hosts the Host header may name: MLflow's default (loopback and private addresses)
        # unless UNLEARN_MLFLOW_ALLOWED_HOSTS says otherwise, e.g. "mlflow.example.org:*".
        if [ -n "${UNLEARN_MLFLOW_ALLOWED_HOSTS:-}" ]; then
            args+=(--allowed-hosts "$UNLEARN_MLFLOW_ALLOWED_HOSTS")
        fi ;;
esac
nohup mlflow server "${args[@]}" > "$store/server.log" 2>&1 &
echo "MLflow server (pid $!) on http://$host:$port (log: $store/server.log)"
echo "use: unlearn run CONFIG --tracking-uri http://$host:$port"
