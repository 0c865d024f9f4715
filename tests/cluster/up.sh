#!/usr/bin/env bash
# make cluster-up: installs on first use, then starts whatever is not running (Kafka, the S3
# server, the forms API, the Iceberg REST catalog), waits for each to answer, and creates the
# topics and the buckets.
# Idempotent: running services are left alone (a forms API whose binary was rebuilt, or a REST
# catalog whose install changed, is restarted).
#
#   up.sh [SERVICE...]     (no argument: all: kafka s3 forms-api iceberg-rest)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

want=("$@")
((${#want[@]})) || want=("${SERVICES[@]}")
wanted() { [[ " ${want[*]} " == *" $1 "* ]]; }

"$ROOT/tests/cluster/install.sh" kafka s3s
if wanted iceberg-rest; then "$ROOT/tests/cluster/install.sh" iceberg; fi
command -v curl >/dev/null || die "curl is not installed: apt-get install curl"

# The forms API is ours: build it when missing or older than its sources.
if wanted forms-api && { [[ ! -x "$FORMS_API_BIN" ]] || [[ -n "$(find "$ROOT/tests/forms-api" -type f -newer "$FORMS_API_BIN" -print -quit)" ]]; }; then
  say "building forms-api (cargo build --release -p forms-api)"
  (cd "$ROOT" && cargo build --release -p forms-api --quiet) || die "building forms-api failed"
fi

mkdir -p "$STATE"
cluster_lock

# Refuses to start NAME when its port is taken by a process that is not ours.
check_port_free() {
  local name="$1" port="$2"
  if port_open "$port"; then
    die "$name: port 127.0.0.1:$port is in use by a process this script did not start (see: ss -ltnp 'sport = :$port')"
  fi
}

# start NAME CMD...: runs CMD detached (own session, so ^C on make does not reach it), logs appended.
start() {
  local name="$1" log pid
  shift
  log="$(log_file "$name")"
  printf '\n===== %s starting %s =====\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
  setsid "$@" >>"$log" 2>&1 </dev/null 8>&- &
  pid=$!
  echo "$pid" >"$(pid_file "$name")"
  say "started $name (pid $pid, log $log)"
}

# ---- Kafka (KRaft, one process: broker + controller) ----
KAFKA_DIR="$STATE/kafka"
KAFKA_CONF="$KAFKA_DIR/server.properties"
start_kafka() {
  mkdir -p "$KAFKA_DIR/data"
  cat >"$KAFKA_CONF" <<EOF
# Written by tests/cluster/up.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
EOF
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    local cluster_id
    # A base64url id may start with '-', which kafka-storage's argument parser reads as an option
    # ("argument --cluster-id/-t: expected one argument"): one start in 64 failed on it.
    cluster_id=-
    while [[ "$cluster_id" == -* ]]; do
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    say "formatting Kafka storage (cluster id $cluster_id)"
    "${KAFKA_TOOL_JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_CONF" \
      --ignore-formatted >>"$(log_file kafka)" 2>&1 || fail_service kafka "formatting the storage failed"
  fi
  check_port_free kafka "$KAFKA_PORT"
  check_port_free kafka-controller "$KAFKA_CONTROLLER_PORT"
  # shellcheck disable=SC2086 # KAFKA_HEAP holds several options
  start kafka java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$ROOT/tests/cluster/log4j2-broker.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF"
}

# ---- S3 server (s3s-fs: buckets are directories under its root) ----
S3_ROOT="$STATE/s3"
start_s3() {
  mkdir -p "$S3_ROOT/$S3_BUCKET"
  check_port_free s3 "$S3_PORT"
  start s3 "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$S3_ROOT"
}

# ---- forms API test server ----
start_forms_api() {
  [[ -d "$FORMS_DIR" ]] || die "forms-api: --forms-dir $FORMS_DIR does not exist"
  check_port_free forms-api "$FORMS_API_PORT"
  check_port_free forms-api-admin "$FORMS_ADMIN_PORT"
  start forms-api "$FORMS_API_BIN" --port "$FORMS_API_PORT" --admin-port "$FORMS_ADMIN_PORT" \
    --forms-dir "$FORMS_DIR" --generate "$FORMS_GENERATE" --typeform "$FORMS_TYPEFORM" --seed "$FORMS_SEED"
}

# ---- Apache Iceberg's REST catalog (our launcher of its servlet: tests/cluster/iceberg-rest) ----
# A JDBC catalog on SQLite (a file under .cluster/), S3FileIO on the local S3 server, path-style.
ICEBERG_REST_STATE="$STATE/iceberg-rest"
ICEBERG_REST_CONF="$ICEBERG_REST_STATE/catalog.properties"
start_iceberg_rest() {
  mkdir -p "$ICEBERG_REST_STATE" "$S3_ROOT/$ICEBERG_BUCKET"
  cat >"$ICEBERG_REST_CONF" <<EOF
# Written by tests/cluster/up.sh on every start; edit the script, not this file.
rest.host=127.0.0.1
rest.port=$ICEBERG_REST_PORT
catalog.name=local
uri=jdbc:sqlite:$ICEBERG_REST_STATE/catalog.db
warehouse=$ICEBERG_WAREHOUSE
io-impl=org.apache.iceberg.aws.s3.S3FileIO
s3.endpoint=http://127.0.0.1:$S3_PORT
s3.path-style-access=true
s3.access-key-id=$S3_ACCESS_KEY
s3.secret-access-key=$S3_SECRET_KEY
client.region=us-east-1
EOF
  check_port_free iceberg-rest "$ICEBERG_REST_PORT"
  # -Dform-etl.iceberg-rest names the install it runs (see the restart below).
  start iceberg-rest env AWS_REGION=us-east-1 java -Xms32m -Xmx256m -XX:+UseSerialGC \
    -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true -Djava.awt.headless=true \
    "-Dform-etl.iceberg-rest=$(iceberg_rest_digest)" \
    -cp "$ICEBERG_REST_CLASSES:$ICEBERG_REST_LIBS/*" "$ICEBERG_REST_MAIN" "$ICEBERG_REST_CONF"
}

# A REST catalog started from another install (its pom or launcher changed since) is restarted.
if wanted iceberg-rest && pid="$(service_pid iceberg-rest)" &&
  ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-Dform-etl.iceberg-rest=$(iceberg_rest_digest) "; then
  say "iceberg-rest (pid $pid) runs an outdated install: restarting it"
  "$ROOT/tests/cluster/down.sh" iceberg-rest
fi

# A forms API still running an older binary (cargo replaced the file) is restarted.
if wanted forms-api && pid="$(service_pid forms-api)" && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == *"(deleted)" ]]; then
  say "forms-api (pid $pid) runs an outdated binary: restarting it"
  "$ROOT/tests/cluster/down.sh" forms-api
fi

for svc in "${want[@]}"; do
  if pid="$(service_pid "$svc")"; then
    say "$svc already running (pid $pid)"
  else
    rm -f "$(pid_file "$svc")"
    case "$svc" in
      kafka) start_kafka ;;
      s3) start_s3 ;;
      forms-api) start_forms_api ;;
      iceberg-rest) start_iceberg_rest ;;
    esac
  fi
done

# ---- readiness: real answers, polled with a deadline ----
s3_ready() {
  local code
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")"
  [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]
}
forms_api_ready() {
  curl -sf -m 2 -o /dev/null "http://127.0.0.1:$FORMS_API_PORT/health" &&
    curl -sf -m 2 -o /dev/null "http://127.0.0.1:$FORMS_ADMIN_PORT/faults"
}
iceberg_rest_ready() {
  curl -sf -m 2 "http://127.0.0.1:$ICEBERG_REST_PORT/v1/config" | grep -q '"endpoints"'
}
kafka_ready() {
  port_open "$KAFKA_PORT" && kafka_topics_list >"$KAFKA_DIR/topics.list" 2>>"$(log_file kafka)"
}

if wanted s3; then
  wait_ready s3 "$(service_pid s3 || echo 0)" s3_ready
  say "s3 ready: http://127.0.0.1:$S3_PORT (bucket $S3_BUCKET)"
fi
if wanted forms-api; then
  wait_ready forms-api "$(service_pid forms-api || echo 0)" forms_api_ready
  say "forms-api ready: http://127.0.0.1:$FORMS_API_PORT (admin http://127.0.0.1:$FORMS_ADMIN_PORT)"
fi
if wanted iceberg-rest; then
  wait_ready iceberg-rest "$(service_pid iceberg-rest || echo 0)" iceberg_rest_ready
  say "iceberg-rest ready: http://127.0.0.1:$ICEBERG_REST_PORT (warehouse $ICEBERG_WAREHOUSE, catalog $ICEBERG_REST_STATE/catalog.db)"
fi
wanted kafka || exit 0
wait_ready kafka "$(service_pid kafka || echo 0)" kafka_ready
say "kafka ready: 127.0.0.1:$KAFKA_PORT"

# ---- topics (created in parallel, only those missing) ----
declare -A create_pids=()
for t in "${TOPICS[@]}"; do
  if ! grep -qxF "$t" "$KAFKA_DIR/topics.list"; then
    timeout 60 "${KAFKA_TOOL_JAVA[@]}" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$KAFKA_PORT" --create --if-not-exists --topic "$t" \
      --partitions "$PARTITIONS" --replication-factor 1 >>"$(log_file kafka)" 2>&1 &
    create_pids[$t]=$!
  fi
done
for t in "${!create_pids[@]}"; do
  wait "${create_pids[$t]}" || fail_service kafka "creating topic $t failed"
  say "created topic $t ($PARTITIONS partitions)"
done

say "cluster up: kafka 127.0.0.1:$KAFKA_PORT, s3 http://127.0.0.1:$S3_PORT, forms-api http://127.0.0.1:$FORMS_API_PORT (admin :$FORMS_ADMIN_PORT), iceberg-rest http://127.0.0.1:$ICEBERG_REST_PORT; state in $STATE"
