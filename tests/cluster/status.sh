#!/usr/bin/env bash
# make cluster-status: for each service, whether its process runs and whether it answers.
# Exits 0 only when all of them run and answer.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

rc=0
report() {
  local name="$1" addr="$2" check="$3" pid
  if pid="$(service_pid "$name")"; then
    if eval "$check" >/dev/null 2>&1; then
      printf '%-12s running (pid %s)  answering  %s\n' "$name" "$pid" "$addr"
    else
      printf '%-12s running (pid %s)  NOT answering  %s  log %s\n' "$name" "$pid" "$addr" "$(log_file "$name")"
      rc=1
    fi
  else
    printf '%-12s stopped  %s\n' "$name" "$addr"
    rc=1
  fi
}
report kafka "127.0.0.1:$KAFKA_PORT" "port_open $KAFKA_PORT"
report s3 "http://127.0.0.1:$S3_PORT" "curl -s -m 2 -o /dev/null http://127.0.0.1:$S3_PORT/"
report forms-api "http://127.0.0.1:$FORMS_API_PORT (admin :$FORMS_ADMIN_PORT)" "curl -sf -m 2 http://127.0.0.1:$FORMS_API_PORT/health"
report iceberg-rest "http://127.0.0.1:$ICEBERG_REST_PORT (Iceberg REST catalog)" "curl -sf -m 2 http://127.0.0.1:$ICEBERG_REST_PORT/v1/config"
if [[ "${1:-}" == "--topics" ]] && port_open "$KAFKA_PORT"; then
  echo "topics:"; kafka_topics_list | sed 's/^/  /'
fi
exit $rc
