#!/usr/bin/env bash
# Start a Ray head node on this machine, with Ray's token authentication on; workers join
# with the same token (see the line this prints).
# usage: scripts/start_ray_head.sh [PORT=6379]
#   RAY_AUTH_TOKEN_PATH  the token file (default ~/.unlearn/ray-auth/auth_token; made, 0600,
#                        when missing). Copy it to each worker machine, never put it on a
#                        command line.
#   UNLEARN_RAY_DASHBOARD_HOST  where the dashboard and Jobs API listen (default 127.0.0.1:
#                        reach it through `ssh -L 8265:127.0.0.1:8265 HEAD`); a wider bind
#                        stays behind the token.
# The ports other nodes must reach (GCS PORT, object manager, ...) listen on this machine's
# address, behind the token too. For one machine, scripts/local_cluster.sh keeps all on loopback.
set -euo pipefail
port="${1:-6379}"
token="${RAY_AUTH_TOKEN_PATH:-$HOME/.unlearn/ray-auth/auth_token}"
if [ ! -s "$token" ]; then
    mkdir -p -m 700 "$(dirname "$token")"
    (umask 077; python -c 'import secrets; print(secrets.token_hex(32), end="")' > "$token")
fi
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token" RAY_TRAIN_V2_ENABLED=1
ray start --head --port "$port" \
    --dashboard-host "${UNLEARN_RAY_DASHBOARD_HOST:-127.0.0.1}"
echo "workers (token file copied to TOKEN): RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=TOKEN" \
     "ray start --address $(hostname -I | awk '{print $1}'):$port"
echo "submit: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$token unlearn run CONFIG" \
     "--address $(hostname -I | awk '{print $1}'):$port"
