#!/bin/sh
# The 50-rule benchmark of docs/BENCHMARKS.md (routing rules, issue 13), run from the
# repository root after
#   cargo build --release --bin polymur --bin polymur-gateway --bin polymur-bench
#   apt-get install -y carbon-c-relay
# Three polymur-bench compare runs back to back:
#   1. the relay without rules (-destinations) vs the same relay with -config rules-50.conf
#      (plaintext TCP, one sending connection)
#   2. the relay with -config rules-50.conf vs carbon-c-relay with the same rules (same load)
#   3. the gateway without rules vs with -config rules-50.conf (HTTP, gzip, 4 clients)
# rules-50.conf names its one cluster's member SINK; the spawn commands put the bench's
# sink ({sink}) there. ROUNDS (3) and DURATION (8s) set the rounds; extra arguments go to
# both polymur-bench runs (e.g. -quiet).
set -eu
BENCH=target/release/polymur-bench
CONF=benches/rules-50.conf
RELAY_FLAGS='-listen-addr=127.0.0.1:{port} -api-addr= -stat-addr= -admin-addr= -outgoing-queue-cap=1000000'
RULES="sed 's/SINK/{sink}/' $CONF > {tmp}/rules.conf && exec target/release/polymur $RELAY_FLAGS -config {tmp}/rules.conf"
PLAIN="target/release/polymur $RELAY_FLAGS -destinations={sink}"
CRELAY="{ printf 'listen type linemode transport plain 127.0.0.1:{port} proto tcp;\n'; sed 's/SINK/{sink}/' $CONF; } > {tmp}/c.conf && exec carbon-c-relay -f {tmp}/c.conf -b 10000 -q 1000000 -s"
COMMON="-target tcp -clients 1 -duration ${DURATION:-8s} -rounds ${ROUNDS:-3}"

echo "== 1. polymur without rules (A) vs with rules-50 (B)"
# shellcheck disable=SC2086
$BENCH $COMMON -label no-rules -spawn "$PLAIN" -label-b rules-50 -spawn-b "$RULES" "$@"
echo "== 2. polymur rules-50 (A) vs carbon-c-relay rules-50 (B)"
# shellcheck disable=SC2086
$BENCH $COMMON -label polymur-rules-50 -spawn "$RULES" -label-b carbon-c-relay-rules-50 -spawn-b "$CRELAY" "$@"
GW='target/release/polymur-gateway -dev-mode -listen-addr=127.0.0.1 -listen-http-port={port} -api-addr= -stat-addr= -admin-addr='
echo "== 3. gateway without rules (A) vs with rules-50 (B)"
# shellcheck disable=SC2086
$BENCH -target gateway -clients 4 -reference=false -duration ${DURATION:-8s} -rounds ${ROUNDS:-3} \
  -label gw-no-rules -spawn "$GW -destinations={sink}" \
  -label-b gw-rules-50 -spawn-b "sed 's/SINK/{sink}/' $CONF > {tmp}/rules.conf && exec $GW -config {tmp}/rules.conf" "$@"
