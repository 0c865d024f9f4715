#!/usr/bin/env bash
# Installs what the local cluster and the tests need into .cache/, each piece only once.
#
#   install.sh [kafka] [s3s] [avro] [venv] [iceberg]     (no argument: all of them)
#
# kafka:   Apache Kafka jars resolved by Maven from Maven Central (tests/cluster/pom.xml)
# s3s:     the s3s-fs S3 server, `cargo install`ed into .cache/tools
# avro:    Apache Avro's avro-tools jar (reads Avro files back in tests)
# venv:    a Python venv with the readers the tests use: fastavro (Avro files), pyiceberg and
#          DuckDB with its iceberg, httpfs and avro extensions (Iceberg tables)
# iceberg: Apache Iceberg's REST catalog: jars resolved by Maven (tests/cluster/iceberg-rest/pom.xml)
#          and our launcher compiled by javac, into .cache/iceberg-rest
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

FASTAVRO_VERSION="1.12.1"
# The venv's packages, pinned. DuckDB's extensions come as PyPI wheels of the same version (loaded
# by path, offline); DuckDB needs pytz for timestamptz values.
VENV_REQUIREMENTS=(
  "fastavro==$FASTAVRO_VERSION" "zstandard==0.25.0" "cramjam==2.14.0"
  "pyiceberg[sql-sqlite,pyarrow]==0.12.0" "pyarrow==26.0.1"
  "duckdb==1.5.5" "duckdb-extension-iceberg==1.5.5" "duckdb-extension-httpfs==1.5.5"
  "duckdb-extension-avro==1.5.5" "pytz==2026.6"
)
# What a complete venv imports (checked after an install), and a quick look that it is all there
# (before: finds the modules without importing them, ~30 ms instead of ~1.5 s).
VENV_MODULES="fastavro zstandard cramjam pyiceberg pyarrow sqlalchemy duckdb pytz duckdb_extension_iceberg duckdb_extension_httpfs duckdb_extension_avro"
VENV_CHECK='import fastavro, zstandard, cramjam, pyiceberg.catalog.sql, pyiceberg.catalog.rest, pyarrow, duckdb, pytz, duckdb_extension_iceberg, duckdb_extension_httpfs, duckdb_extension_avro'
VENV_FIND="import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in '$VENV_MODULES'.split()))"

timed() {
  local what="$1" start=$SECONDS
  shift
  say "installing $what (log: $INSTALL_LOG)"
  if ! "$@" >>"$INSTALL_LOG" 2>&1; then
    printf '[cluster] ERROR: installing %s failed; last lines of %s:\n' "$what" "$INSTALL_LOG" >&2
    tail -n 30 "$INSTALL_LOG" | sed 's/^/    /' >&2
    exit 1
  fi
  say "installed $what in $((SECONDS - start))s"
}

install_kafka() {
  local pom="$ROOT/tests/cluster/pom.xml" sum stamp tmp
  sum="$(sha256sum "$pom" | cut -c1-16)"
  stamp="$CACHE/kafka/resolved-$sum"
  [[ -f "$stamp" && -d "$KAFKA_LIBS" ]] && return 0
  command -v mvn >/dev/null || die "mvn (Apache Maven) is not installed: apt-get install maven"
  command -v java >/dev/null || die "java is not installed: apt-get install openjdk-17-jre-headless"
  mkdir -p "$CACHE/kafka"
  tmp="$CACHE/kafka/libs.tmp"
  rm -rf "$tmp"
  INSTALL_LOG="$CACHE/kafka/install.log"
  timed "Apache Kafka $KAFKA_VERSION jars" \
    mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime "-DoutputDirectory=$tmp"
  rm -rf "$KAFKA_LIBS" "$CACHE"/kafka/resolved-*
  mv "$tmp" "$KAFKA_LIBS"
  touch "$stamp"
}

install_avro() {
  [[ -f "$AVRO_TOOLS_JAR" ]] && return 0
  command -v mvn >/dev/null || die "mvn (Apache Maven) is not installed: apt-get install maven"
  mkdir -p "$CACHE/avro"
  INSTALL_LOG="$CACHE/avro/install.log"
  timed "avro-tools $AVRO_TOOLS_VERSION" \
    mvn -B -q dependency:copy "-Dartifact=org.apache.avro:avro-tools:$AVRO_TOOLS_VERSION" \
    -Dtransitive=false "-DoutputDirectory=$CACHE/avro"
}

install_venv() {
  local stamp="$VENV/.form-etl-requirements" want
  want="$(printf '%s\n' "${VENV_REQUIREMENTS[@]}")"
  if [[ -x "$PYTHON" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$PYTHON" -c "$VENV_FIND" 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || die "python3 is not installed: apt-get install python3 python3-venv"
  mkdir -p "$CACHE"
  INSTALL_LOG="$CACHE/venv-install.log"
  # One install at a time; tests may be reading files with this venv meanwhile, so a working venv
  # gets the missing packages added, not deleted and made anew.
  exec 9>"$CACHE/.venv-install.lock"
  flock 9
  if [[ -x "$PYTHON" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$PYTHON" -c "$VENV_FIND" 2>/dev/null; then
    return 0
  fi
  if ! [[ -x "$PYTHON" ]] || ! "$PYTHON" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >>"$INSTALL_LOG" 2>&1 || die "python3 -m venv $VENV failed (apt-get install python3-venv); see $INSTALL_LOG"
  fi
  timed "Python venv: fastavro $FASTAVRO_VERSION, zstandard, cramjam, pyiceberg, pyarrow, DuckDB and its iceberg/httpfs/avro extensions" \
    "$VENV/bin/pip" install -q "${VENV_REQUIREMENTS[@]}"
  "$PYTHON" -c "$VENV_CHECK" >>"$INSTALL_LOG" 2>&1 || die "the venv $VENV does not import what it should ($VENV_CHECK; see $INSTALL_LOG): delete $VENV and run this again"
  printf '%s\n' "$want" >"$stamp"
}

# The REST catalog: its jars (a Maven local repository of its own under .cache/iceberg-rest/m2, so
# a cold install is really cold) and our launcher (tests/cluster/iceberg-rest/src), compiled by
# javac against them. Done again when the pom or the launcher changes (the stamp names their digest).
install_iceberg() {
  local pom="$ICEBERG_REST_SRC/pom.xml" digest stamp tmp
  digest="$(iceberg_rest_digest)"
  stamp="$ICEBERG_REST_HOME/resolved-$digest"
  [[ -f "$stamp" && -d "$ICEBERG_REST_LIBS" && -d "$ICEBERG_REST_CLASSES" ]] && return 0
  command -v mvn >/dev/null || die "mvn (Apache Maven) is not installed: apt-get install maven"
  command -v java >/dev/null || die "java is not installed: apt-get install openjdk-17-jre-headless"
  command -v javac >/dev/null || die "javac (a JDK) is not installed: apt-get install openjdk-17-jdk-headless"
  mkdir -p "$ICEBERG_REST_HOME"
  exec 9>"$ICEBERG_REST_HOME/.install.lock"
  flock 9
  [[ -f "$stamp" && -d "$ICEBERG_REST_LIBS" && -d "$ICEBERG_REST_CLASSES" ]] && return 0
  tmp="$ICEBERG_REST_HOME/tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  INSTALL_LOG="$ICEBERG_REST_HOME/install.log"
  timed "Apache Iceberg $ICEBERG_VERSION REST catalog jars" \
    mvn -B -q -f "$pom" "-Dmaven.repo.local=$ICEBERG_REST_HOME/m2" dependency:copy-dependencies \
    -DincludeScope=runtime "-DoutputDirectory=$tmp/libs"
  timed "the REST catalog launcher (javac)" \
    javac --release 17 -Xlint:all -Werror -cp "$tmp/libs/*" -d "$tmp/classes" "$ICEBERG_REST_SRC"/src/*.java
  rm -rf "$ICEBERG_REST_LIBS" "$ICEBERG_REST_CLASSES" "$ICEBERG_REST_HOME"/resolved-*
  mv "$tmp/libs" "$ICEBERG_REST_LIBS"
  mv "$tmp/classes" "$ICEBERG_REST_CLASSES"
  rmdir "$tmp"
  touch "$stamp"
}

install_s3s() {
  [[ -x "$S3S_FS" ]] && return 0
  command -v cargo >/dev/null || die "cargo is not installed (rustup)"
  mkdir -p "$CACHE/tools"
  INSTALL_LOG="$CACHE/s3s.log"
  # One install at a time, even when two cluster-up run at once.
  exec 9>"$CACHE/tools/.install.lock"
  flock 9
  [[ -x "$S3S_FS" ]] && return 0
  timed "s3s-fs $S3S_FS_VERSION (cargo install, about 5 minutes)" \
    cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$CACHE/tools"
}

what=("$@")
((${#what[@]})) || what=(kafka s3s avro venv iceberg)
for w in "${what[@]}"; do
  case "$w" in
    kafka) install_kafka ;;
    s3s) install_s3s ;;
    avro) install_avro ;;
    venv) install_venv ;;
    iceberg) install_iceberg ;;
    *) die "unknown install target '$w' (kafka, s3s, avro, venv, iceberg)" ;;
  esac
done
