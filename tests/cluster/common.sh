# Shared settings and helpers for the local cluster scripts (sourced, not run).
#
# Everything lives under the repository: installs in .cache/ (kept between runs), state in
# .cluster/ (data dirs, logs, pid files). All services listen on 127.0.0.1 only.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# FORM_ETL_CACHE moves the installs elsewhere (e.g. to try a cold install beside the shared one).
CACHE="${FORM_ETL_CACHE:-$ROOT/.cache}"
STATE="$ROOT/.cluster"

# Pinned versions (the pom pins the Kafka jars; see tests/cluster/pom.xml).
KAFKA_VERSION="4.4.0"
AVRO_TOOLS_VERSION="1.12.1"
S3S_FS_VERSION="0.14.1"
ICEBERG_VERSION="1.11.0"

KAFKA_LIBS="$CACHE/kafka/libs"
KAFKA_STAMP="$CACHE/kafka/resolved-$KAFKA_VERSION"
AVRO_TOOLS_JAR="$CACHE/avro/avro-tools-$AVRO_TOOLS_VERSION.jar"
S3S_FS="$CACHE/tools/bin/s3s-fs"
VENV="$CACHE/venv"
PYTHON="$VENV/bin/python"
FORMS_API_BIN="$ROOT/target/release/forms-api"
# Apache Iceberg's REST catalog (tests/cluster/iceberg-rest): jars resolved by Maven (its own local
# repository under .cache/iceberg-rest/m2), our launcher compiled by javac.
ICEBERG_REST_SRC="$ROOT/tests/cluster/iceberg-rest"
ICEBERG_REST_HOME="$CACHE/iceberg-rest"
ICEBERG_REST_LIBS="$ICEBERG_REST_HOME/libs"
ICEBERG_REST_CLASSES="$ICEBERG_REST_HOME/classes"
ICEBERG_REST_MAIN="dev.formetl.cluster.LocalRestCatalog"

KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
S3_PORT=9000
FORMS_API_PORT=8000
FORMS_ADMIN_PORT=8001
ICEBERG_REST_PORT=8181

S3_ACCESS_KEY="admin"
S3_SECRET_KEY="password"
S3_BUCKET="output"
# The REST catalog's warehouse: a bucket of its own, so the Avro output's bucket stays as it was.
ICEBERG_BUCKET="iceberg"
ICEBERG_WAREHOUSE="s3://$ICEBERG_BUCKET/warehouse"

TOPICS=(form.events form.enriched form.events.dlq)
PARTITIONS="${FORM_ETL_PARTITIONS:-3}"
FORMS_GENERATE="${FORM_ETL_FORMS_GENERATE:-1000}"
# Typeform-shaped forms tf-000000 … (forms-api --typeform N): the schema-evolution tests use them.
FORMS_TYPEFORM="${FORM_ETL_FORMS_TYPEFORM:-1000}"
FORMS_SEED="${FORM_ETL_FORMS_SEED:-42}"
FORMS_DIR="${FORM_ETL_FORMS_DIR:-$ROOT/tests/fixtures/seed/forms}"
# Seconds each service gets to become ready.
READY_TIMEOUT="${FORM_ETL_READY_TIMEOUT:-90}"
KAFKA_HEAP="${FORM_ETL_KAFKA_HEAP:--Xms256m -Xmx512m}"

SERVICES=(kafka s3 forms-api iceberg-rest)

say() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# Serializes cluster-up/cluster-down runs (several people share one machine). The lock is fd 8;
# started services must not inherit it (start() closes it). Nested calls skip it.
cluster_lock() {
  [[ -n "${FORM_ETL_CLUSTER_LOCKED:-}" ]] && return 0
  mkdir -p "$STATE"
  exec 8>"$STATE/.lock"
  if ! flock -w 600 8; then
    die "another cluster-up/cluster-down holds $STATE/.lock for more than 10 minutes"
  fi
  export FORM_ETL_CLUSTER_LOCKED=1
}

# A digest of what the REST catalog install is made from (its pom and launcher source): names the
# install's stamp, and marks the running catalog's command line, so a changed one is restarted.
iceberg_rest_digest() {
  cat "$ICEBERG_REST_SRC/pom.xml" "$ICEBERG_REST_SRC"/src/*.java | sha256sum | cut -c1-16
}

log_file() { echo "$STATE/$1.log"; }
pid_file() { echo "$STATE/$1.pid"; }

# A string the service's command line must contain, so a recycled pid is never mistaken for ours.
service_marker() {
  case "$1" in
    kafka) echo "$STATE/kafka/server.properties" ;;
    s3) echo "$STATE/s3" ;;
    forms-api) echo "--admin-port $FORMS_ADMIN_PORT" ;;
    iceberg-rest) echo "$STATE/iceberg-rest/catalog.properties" ;;
  esac
}

# Prints the pid of the service if it is running (pid file + live process with our command line).
service_pid() {
  local pf pid
  pf="$(pid_file "$1")"
  [[ -f "$pf" ]] || return 1
  pid="$(cat "$pf")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(service_marker "$1")" || return 1
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Explains a failed service: which one, its log file and the log's last lines; then exits.
fail_service() {
  local name="$1" why="$2" log
  log="$(log_file "$name")"
  printf '[cluster] ERROR: %s: %s\n' "$name" "$why" >&2
  printf '[cluster] log file: %s\n' "$log" >&2
  if [[ -f "$log" ]]; then
    printf '[cluster] last lines of %s:\n' "$log" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
  fi
  exit 1
}

# wait_ready NAME PID CHECK...: polls CHECK (a command) until it succeeds, the deadline passes,
# or the process dies. Polls every 0.2 s; there is no fixed sleep.
wait_ready() {
  local name="$1" pid="$2"
  shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  while true; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      fail_service "$name" "the process (pid $pid) exited before it was ready"
    fi
    if ((SECONDS >= deadline)); then
      fail_service "$name" "not ready after ${READY_TIMEOUT}s (check: $*)"
    fi
    sleep 0.2
  done
}

# Java command line for Kafka's command-line tools (small heap, fast start).
KAFKA_TOOL_JAVA=(java -Xms64m -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
  "-Dlog4j2.configurationFile=$ROOT/tests/cluster/log4j2-tools.properties"
  -cp "$KAFKA_LIBS/*")

# Lists topics through a real metadata request to the broker (one JVM, at most 30 s).
kafka_topics_list() {
  timeout 30 "${KAFKA_TOOL_JAVA[@]}" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list
}
