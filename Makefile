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
	@echo "make run             start the local cluster (connectors: coming next)"
	@echo "make build           cargo build --release --workspace"
	@echo "make build-smartmodules  build the form-flatten SmartModule (wasm32-unknown-unknown)"
	@echo "make lint            rustfmt check + clippy -D warnings"
	@echo "make deps            install Kafka jars, s3s-fs, avro-tools, fastavro venv into .cache/"
	@echo "make cluster-up | cluster-down | cluster-status"
	@echo "make bench           benchmarks (not yet)"

build:
	$(CARGO) build --release --workspace

build-smartmodules:
	@if [[ -f $(SMARTMODULE_MANIFEST) ]]; then \
	  echo "$(CARGO) build --release --target wasm32-unknown-unknown --manifest-path $(SMARTMODULE_MANIFEST) --target-dir target"; \
	  $(CARGO) build --release --target wasm32-unknown-unknown --manifest-path $(SMARTMODULE_MANIFEST) --target-dir target; \
	else \
	  echo "build-smartmodules: $(SMARTMODULE_MANIFEST) does not exist yet: skipped"; \
	fi

deps:
	tests/cluster/install.sh kafka s3s avro venv

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
	FORM_ETL_REQUIRE_CLUSTER=1 $(CARGO) test --release --workspace

run: cluster-up
	@echo
	@echo "The local cluster is up: Kafka 127.0.0.1:9092, S3 http://127.0.0.1:9000 (admin/password,"
	@echo "bucket output), forms API http://127.0.0.1:8000 (admin :8001)."
	@echo "The connectors (kafka-source, s3-sink) come next: make run will start them here."

# Throughput, peak RSS and CPU of the connectors beside the machine's ceilings (tests/bench);
# writes target/bench/results.json and BENCHMARKS.md. Quick run:
#   make bench BENCH_ARGS="--events 100000 --repeats 1"
BENCH_ARGS ?=
bench: cluster-up build-smartmodules
	$(CARGO) build --release -p forms-api -p kafka-source -p s3-sink -p form-etl-bench
	target/release/form-etl-bench --command 'make bench BENCH_ARGS="$(BENCH_ARGS)"' $(BENCH_ARGS)
