#!/usr/bin/env bash
# Start a Ray head node on this machine; workers join with `ray start --address HEAD:PORT`.
# usage: scripts/start_ray_head.sh [PORT=6379]
set -euo pipefail
port="${1:-6379}"
# The dashboard and Jobs API stay on 127.0.0.1 (reach them through an SSH tunnel).
RAY_TRAIN_V2_ENABLED=1 ray start --head --port "$port" --dashboard-host 127.0.0.1
echo "use: unlearn run CONFIG --address $(hostname -I | awk '{print $1}'):$port"
