#!/usr/bin/env bash
# make cluster-down: stops the cluster's processes (those recorded in .cluster/*.pid), politely
# first (SIGTERM, Kafka shuts down cleanly in a few seconds), then SIGKILL after a deadline.
# Data stays in .cluster/ (delete that folder for a clean slate).
#
#   down.sh [SERVICE...]     (no argument: all: kafka s3 forms-api iceberg-rest)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STOP_TIMEOUT="${FORM_ETL_STOP_TIMEOUT:-30}"

stop() {
  local name="$1" pid deadline
  if ! pid="$(service_pid "$name")"; then
    rm -f "$(pid_file "$name")"
    say "$name not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "$name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$(pid_file "$name")"
  say "stopped $name (pid $pid)"
}

cluster_lock
what=("$@")
((${#what[@]})) || what=("${SERVICES[@]}")
# Stop the forms API, S3 and the REST catalog in parallel with Kafka's (slower) clean shutdown.
pids=()
for svc in "${what[@]}"; do
  stop "$svc" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
