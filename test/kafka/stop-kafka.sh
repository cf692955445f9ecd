#!/usr/bin/env bash
# Stops a broker started by test/kafka/start-kafka.sh and removes its work dir.
# Usage: stop-kafka.sh [KAFKA_DIR]   (default: $KAFKA_DIR)
set -euo pipefail
dir="${1:-${KAFKA_DIR:-}}"
[ -n "$dir" ] && [ -f "$dir/kafka.pid" ] || { echo "stop-kafka: no broker work dir given (argument or KAFKA_DIR)" >&2; exit 1; }
pid="$(cat "$dir/kafka.pid")"
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  # A controlled shutdown takes a few seconds; after 30 s, stop waiting.
  for ((i = 0; i < 120; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
fi
rm -rf "$dir"
