#!/usr/bin/env bash
# Installs what the local cluster and the tests need into .cache/, each piece only once.
#
#   install.sh [kafka] [s3s] [avro] [venv]     (no argument: all of them)
#
# kafka: Apache Kafka jars resolved by Maven from Maven Central (tests/cluster/pom.xml)
# s3s:   the s3s-fs S3 server, `cargo install`ed into .cache/tools
# avro:  Apache Avro's avro-tools jar (reads Avro files back in tests)
# venv:  a Python venv with fastavro (reads Avro files back in tests)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

FASTAVRO_VERSION="1.12.1"

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
  if [[ -x "$PYTHON" ]] && "$PYTHON" -c 'import fastavro, zstandard, cramjam' 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || die "python3 is not installed: apt-get install python3 python3-venv"
  mkdir -p "$CACHE"
  INSTALL_LOG="$CACHE/venv-install.log"
  rm -rf "$VENV"
  timed "Python venv with fastavro $FASTAVRO_VERSION (+ zstandard, cramjam for zstd/snappy files)" \
    bash -c "python3 -m venv '$VENV' && '$VENV/bin/pip' install -q 'fastavro==$FASTAVRO_VERSION' 'zstandard==0.25.0' 'cramjam==2.14.0'"
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
((${#what[@]})) || what=(kafka s3s avro venv)
for w in "${what[@]}"; do
  case "$w" in
    kafka) install_kafka ;;
    s3s) install_s3s ;;
    avro) install_avro ;;
    venv) install_venv ;;
    *) die "unknown install target '$w' (kafka, s3s, avro, venv)" ;;
  esac
done
