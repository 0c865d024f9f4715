# form-etl: build, lint, local cluster, tests.
#
#   make test            installs what is missing, starts the local cluster, runs every test
#   make run             starts the local cluster (the connectors come next)
#   make cluster-up | cluster-down | cluster-status
#
# Everything is built with --release (one profile for binaries, tests and benchmarks).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# The prerequisites of `test` must run in order (deps, build, cluster-up, then cargo test).
.NOTPARALLEL:
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
CARGO ?= cargo
SMARTMODULE_MANIFEST := smartmodules/form-flatten/Cargo.toml

# Where the test tools live (installed by `make deps`); integration tests read these.
export FORM_ETL_AVRO_TOOLS_JAR ?= $(ROOT)/.cache/avro/avro-tools-1.12.1.jar
export FORM_ETL_PYTHON ?= $(ROOT)/.cache/venv/bin/python
# Cluster addresses (docs/internals.md); override to test against another cluster.
export FORM_ETL_KAFKA ?= 127.0.0.1:9092
export FORM_ETL_S3_ENDPOINT ?= http://127.0.0.1:9000
export FORM_ETL_FORMS_API ?= http://127.0.0.1:8000
export FORM_ETL_FORMS_ADMIN ?= http://127.0.0.1:8001

.PHONY: help build build-smartmodules deps lint cluster-up cluster-down cluster-status test run bench

help:
	@echo "make test            deps + build + cluster-up + all tests (FORM_ETL_REQUIRE_CLUSTER=1)"
	@echo "make run             cluster + both connectors, seed event + batch, rows from S3"
	@echo "make build           cargo build --release --workspace"
	@echo "make build-smartmodules  build the form-flatten SmartModule (wasm32-unknown-unknown)"
	@echo "make lint            rustfmt check + clippy -D warnings"
	@echo "make deps            install Kafka jars, s3s-fs, avro-tools, fastavro venv into .cache/"
	@echo "make cluster-up | cluster-down | cluster-status"
	@echo "make bench           throughput, RSS, CPU beside the ceilings (BENCHMARKS.md)"

build:
	$(CARGO) build --release --workspace

# rust-toolchain.toml names the wasm target, but rustup adds it only when it installs the toolchain:
# a machine that already had 1.95.0 lacks it, so it is added here when missing.
build-smartmodules:
	@if [[ -f $(SMARTMODULE_MANIFEST) ]]; then \
	  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then \
	    echo "rustup target add wasm32-unknown-unknown"; rustup target add wasm32-unknown-unknown; \
	  fi; \
	  echo "$(CARGO) build --release --target wasm32-unknown-unknown --manifest-path $(SMARTMODULE_MANIFEST) --target-dir target"; \
	  $(CARGO) build --release --target wasm32-unknown-unknown --manifest-path $(SMARTMODULE_MANIFEST) --target-dir target; \
	else \
	  echo "build-smartmodules: $(SMARTMODULE_MANIFEST) does not exist yet: skipped"; \
	fi

deps:
	tests/cluster/install.sh kafka s3s avro venv iceberg

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

cluster-up:
	tests/cluster/up.sh

cluster-down:
	tests/cluster/down.sh

cluster-status:
	tests/cluster/status.sh --topics

# Keep cargo test last: the output of `make test` ends with its summary lines.
test: deps build-smartmodules build cluster-up
	FORM_ETL_REQUIRE_CLUSTER=1 $(CARGO) test --release --workspace --no-fail-fast

run: deps build-smartmodules cluster-up
	$(CARGO) build --release -p kafka-source -p s3-sink
	@set -u; \
	export S3_ACCESS_KEY_ID=admin S3_SECRET_ACCESS_KEY=password; \
	produce() { java -cp '.cache/kafka/libs/*' org.apache.kafka.tools.ConsoleProducer --bootstrap-server 127.0.0.1:9092 \
	  --topic form.events --property parse.key=true --property key.separator='|' >/dev/null; }; \
	files() { find .cluster/s3/output/form-etl/$$1 -name '*.avro' 2>/dev/null | sort; }; \
	count_rows() { f=$$(files $$1); [ -z "$$f" ] && echo 0 || java -jar .cache/avro/avro-tools-1.12.1.jar count $$f 2>/dev/null | tail -1; }; \
	read_rows() { if .cache/venv/bin/python -c 'import fastavro, zstandard' 2>/dev/null; then \
	  files $$1 | tr '\n' '\0' | xargs -0 -r .cache/venv/bin/python -c \
	  'import sys,fastavro,json; [print(json.dumps(r,default=str,ensure_ascii=False)) for p in sys.argv[1:] for r in fastavro.reader(open(p,"rb"))]'; \
	  else t=.cluster/run-$$1.avro; rm -f $$t; java -jar .cache/avro/avro-tools-1.12.1.jar cat $$(files $$1) $$t 2>/dev/null && \
	  java -jar .cache/avro/avro-tools-1.12.1.jar tojson $$t 2>/dev/null; fi; }; \
	setsid target/release/s3-sink --config config/form-s3-sink.yaml >.cluster/s3-sink.log 2>&1 & sink=$$!; \
	setsid target/release/s3-sink --config config/form-s3-sink-iceberg.yaml >.cluster/s3-sink-iceberg.log 2>&1 & lake=$$!; \
	setsid target/release/kafka-source --config config/form-events-source.yaml >.cluster/kafka-source.log 2>&1 & src=$$!; \
	trap 'echo; echo "Stopping the connectors: they drain and commit..."; kill -TERM $$src $$sink $$lake 2>/dev/null; wait $$src $$sink $$lake 2>/dev/null; echo Stopped.; exit 0' INT TERM; \
	set +e +o pipefail; \
	echo "kafka-source (pid $$src, log .cluster/kafka-source.log), s3-sink to Avro files (pid $$sink, log .cluster/s3-sink.log) and s3-sink to Iceberg tables (pid $$lake, log .cluster/s3-sink-iceberg.log) started."; \
	before=$$(count_rows form); \
	tag=$$(date +%s); batch=200; \
	{ tr -d '\n' < tests/fixtures/seed/form.events.kv | sed 's/:/|/'; echo; \
	  for i in $$(seq 0 $$((batch - 1))); do id=$$(printf 'form-%06d' $$((i % 1000))); \
	    printf '%s|{"form_id":"%s","form_title":"demo","event_happened_at":"2024-01-1%d 12:%02d:00","event_type":"updated","run":"%s"}\n' \
	      $$id $$id $$((i % 3)) $$((i % 60)) $$tag; done; } | produce; \
	echo "Produced the seed event and $$batch generated events to form.events; waiting for their rows in S3..."; \
	want=$$((before + batch + 1)); deadline=$$((SECONDS + 120)); \
	while [ "$$(count_rows form)" -lt $$want ]; do \
	  if [ $$SECONDS -gt $$deadline ]; then echo "Timed out: see .cluster/s3-sink.log and .cluster/kafka-source.log"; break; fi; \
	  kill -0 $$sink 2>/dev/null || { echo "s3-sink exited: see .cluster/s3-sink.log"; tail -5 .cluster/s3-sink.log; break; }; sleep 1; done; \
	echo; echo "== table form (seed row, then a sample) =="; rows=$$(read_rows form); echo "$$rows" | grep '"abcde"' | tail -1; echo "$$rows" | grep -v '"abcde"' | tail -3; \
	echo; echo "== table form_field (sample) =="; rows=$$(read_rows form_field); echo "$$rows" | grep '"abcde"' | sed -n 1,2p; echo "$$rows" | grep -v '"abcde"' | tail -2; \
	echo; echo "form: $$(count_rows form) rows, form_field: $$(count_rows form_field) rows (all runs so far), in:"; \
	find .cluster/s3/output/form-etl -name '*.avro' | sed 's|^.cluster/s3/output/|  s3://output/|' | sort | sed -n 1,12p; \
	echo "  (s3://output/form-etl/... = files under .cluster/s3/output/form-etl/; S3 at http://127.0.0.1:9000, admin/password)"; \
	echo; echo "== Iceberg tables form_etl.form and form_etl.form_field, queried with DuckDB (rows are committed every 10 s) =="; \
	.cache/venv/bin/python scripts/iceberg-sql.py --wait-rows $$((batch + 1)) || { echo "see .cluster/s3-sink-iceberg.log"; tail -5 .cluster/s3-sink-iceberg.log; }; \
	echo "Your own SQL over the same tables: .cache/venv/bin/python scripts/iceberg-sql.py \"SELECT count(*) FROM form_field\""; \
	echo; echo "The pipeline keeps running: produce more to form.events and watch new files appear."; \
	echo "Metrics: http://127.0.0.1:9464/metrics (source), http://127.0.0.1:9465/metrics (Avro sink), http://127.0.0.1:9466/metrics (Iceberg sink). Press Ctrl-C to stop."; \
	wait $$sink $$src $$lake

# Throughput, peak RSS and CPU of the connectors beside the machine's ceilings (tests/bench);
# writes target/bench/results.json and BENCHMARKS.md. Quick run:
#   make bench BENCH_ARGS="--events 100000 --repeats 1"
BENCH_ARGS ?=
bench: cluster-up build-smartmodules
	$(CARGO) build --release -p forms-api -p kafka-source -p s3-sink -p form-etl-bench
	target/release/form-etl-bench --command 'make bench BENCH_ARGS="$(BENCH_ARGS)"' $(BENCH_ARGS)

# The chaos suite of issue #15 (tests/chaos): a private cluster of its own (never the shared
# one), kills, outages, restarts, a hot swap, poison; an oracle reads everything back. Prints a
# table and writes target/chaos/report.md; exits non-zero if a scenario fails. State in .chaos/.
#   make chaos                          every scenario (bounded: 20 minutes)
#   make chaos SCENARIO=replay-cut      one, or a comma-separated list (names: --list)
#   make chaos CHAOS_ARGS="--seed 7"    more flags (target/release/form-etl-chaos --help)
.PHONY: chaos
SCENARIO ?=
CHAOS_ARGS ?=
chaos: deps build-smartmodules
	$(CARGO) build --release -p form-etl-chaos -p kafka-source -p s3-sink -p forms-api
	target/release/form-etl-chaos $(if $(SCENARIO),--scenario $(SCENARIO)) $(CHAOS_ARGS)
