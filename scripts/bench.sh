#!/usr/bin/env bash
# Benchmarks cachegate beside a direct connection in one run, and prints the ratios.
#
#   scripts/bench.sh            # 5 s per run
#   DURATION=2s scripts/bench.sh
#   CACHEGATE_BIN=/path/to/other/cachegate scripts/bench.sh
#
# Setup (as issue #5 describes): the backend and the front (cachegate, or redis-server's own
# TLS) pinned together on CPU 0, the load generator (`cachegate bench`) on CPU 1; TLS 1.3 with
# the dev ECDSA P-256 certificate; 50 connections; 64-byte values. Needs redis-server and
# memcached (scripts/test installs them) and taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
# CACHEGATE_BIN=path: benchmark that binary (e.g. an older build, for a before/after table).
if [ -n "${CACHEGATE_BIN:-}" ]; then
  BIN=$CACHEGATE_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/cachegate
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; pkill -F "$WORK/redis.pid" 2>/dev/null; for f in "$WORK"/node-*.pid; do pkill -F "$f" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); RTLS=$(port); MP=$(port); CT=$(port); CP=$(port); MT=$(port); HP=$(port); EP=$(port)
# The same memcached node behind a listener that sends gets as they came (memcached.meta_gets =
# false), to show what sending one-key gets as meta gets is worth.
MC=$(port)
# A Redis Cluster of 3 primaries (client and bus ports), behind the "cluster" listener.
K1=$(port); K2=$(port); K3=$(port); B1=$(port); B2=$(port); B3=$(port); KT=$(port)
# At-rest encryption's cost: a plaintext listener that seals the bench's keys, beside the
# plaintext one that does not (the same path but for the sealing).
openssl rand -hex 32 > "$WORK/root.key"

cat > "$WORK/cg.toml" <<TOML
data_dir = "$WORK/data"
[[listeners]]
name = "tls"
bind = "127.0.0.1:$CT"
auth.mode = "none"
upstream.address = "127.0.0.1:$RP"
upstream.warm_connections = $CONNS
[[listeners]]
name = "plain"
bind = "127.0.0.1:$CP"
tls.enabled = false
auth.mode = "none"
upstream.address = "127.0.0.1:$RP"
upstream.warm_connections = $CONNS
[[listeners]]
name = "encrypted"
bind = "127.0.0.1:$EP"
tls.enabled = false
auth.mode = "none"
upstream.address = "127.0.0.1:$RP"
upstream.warm_connections = $CONNS
encryption.root_key_file = "$WORK/root.key"
encryption.keyspaces = [{ patterns = ["bench:*"] }]
[[listeners]]
name = "cluster"
bind = "127.0.0.1:$KT"
auth.mode = "none"
upstream.cluster = true
upstream.nodes = ["127.0.0.1:$K1"]
[[listeners]]
name = "memcached"
protocol = "memcached"
bind = "127.0.0.1:$MT"
upstream.nodes = ["127.0.0.1:$MP"]
upstream.warm_connections = $CONNS
[[listeners]]
name = "memcached-classic"
protocol = "memcached"
bind = "127.0.0.1:$MC"
upstream.nodes = ["127.0.0.1:$MP"]
upstream.warm_connections = $CONNS
memcached.meta_gets = false
TOML
# Start cachegate once to generate the dev certificates, then use them for redis's TLS too.
taskset -c 0 "$BIN" --config "$WORK/cg.toml" >"$WORK/cg.log" 2>&1 &
CG=$!
for _ in $(seq 50); do [ -f "$WORK/data/dev-certs/dev-ca.pem" ] && break; sleep 0.1; done
CA=$WORK/data/dev-certs/dev-ca.pem
taskset -c 0 redis-server --port "$RP" --tls-port "$RTLS" --bind 127.0.0.1 --save '' \
  --tls-cert-file "$WORK/data/dev-certs/dev-server.pem" --tls-key-file "$WORK/data/dev-certs/dev-server-key.pem" \
  --tls-ca-cert-file "$CA" --tls-auth-clients no --daemonize yes --pidfile "$WORK/redis.pid" >/dev/null
for n in "$K1:$B1" "$K2:$B2" "$K3:$B3"; do
  taskset -c 0 redis-server --port "${n%:*}" --cluster-port "${n#*:}" --bind 127.0.0.1 --save '' \
    --cluster-enabled yes --cluster-config-file "$WORK/node-${n%:*}.conf" --dir "$WORK" \
    --daemonize yes --pidfile "$WORK/node-${n%:*}.pid" >/dev/null
done
sleep 0.5
redis-cli --cluster create "127.0.0.1:$K1" "127.0.0.1:$K2" "127.0.0.1:$K3" --cluster-yes >/dev/null
until redis-cli -p "$K1" cluster info | grep -q 'cluster_state:ok'; do sleep 0.2; done
MEMCACHED_USER=(); [ "$(id -u)" = 0 ] && MEMCACHED_USER=(-u root)
taskset -c 0 memcached -l 127.0.0.1 -p "$MP" -U 0 -t 1 "${MEMCACHED_USER[@]}" &
MEMCACHED=$!
sleep 1.5
REDIS=$(cat "$WORK/redis.pid")
# haproxy as a reference row, when installed (TLS termination, tcp mode).
HAPROXY=""
if command -v haproxy >/dev/null 2>&1; then
  cat "$WORK/data/dev-certs/dev-server.pem" "$WORK/data/dev-certs/dev-server-key.pem" > "$WORK/bundle.pem"
  cat > "$WORK/haproxy.cfg" <<HCFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$HP ssl crt $WORK/bundle.pem
  default_backend be
backend be
  server r1 127.0.0.1:$RP
HCFG
  taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
  HAPROXY=$!
  sleep 0.5
fi

load() { taskset -c 1 "$BIN" bench --duration "$DURATION" --connections "$CONNS" "$@"; }

echo "== cachegate benchmark, $(date -u +%F), $(nproc) cores, $(uname -m)"
for cmd in get set; do
  for p in 1 16; do
    [ "$cmd" = set ] && [ "$p" = 16 ] && continue
    echo
    load --command $cmd --pipeline $p --target "127.0.0.1:$CT" --cacert "$CA" --pid $CG \
      --backend-pid "$REDIS" --compare --direct "127.0.0.1:$RP" --direct-pid "$REDIS"
    load --command $cmd --pipeline $p --target "127.0.0.1:$CP" --pid $CG | tail -n 1 | sed 's/target/cachegate plaintext/'
    load --command $cmd --pipeline $p --target "127.0.0.1:$RTLS" --cacert "$CA" --pid "$REDIS" | tail -n 1 | sed 's/target/redis own TLS/'
    if [ -n "$HAPROXY" ]; then
      load --command $cmd --pipeline $p --target "127.0.0.1:$HP" --cacert "$CA" --pid "$HAPROXY" --backend-pid "$REDIS" | tail -n 1 | sed 's/target/haproxy TLS/' || echo "  haproxy TLS: failed"
    fi
  done
done
echo
echo "== Redis Cluster, 3 primaries: cachegate (TLS, one endpoint) beside a cluster-aware client on the nodes (direct)"
sleep 1
for cmd in get set; do
  for p in 1 16; do
    [ "$cmd" = set ] && [ "$p" = 16 ] && continue
    load --command $cmd --pipeline $p --target "127.0.0.1:$KT" --cacert "$CA" --pid $CG \
      --compare --direct "127.0.0.1:$K1" --direct-cluster
  done
done
echo
load --memcached --command get --target "127.0.0.1:$MT" --cacert "$CA" --pid $CG \
  --backend-pid "$MEMCACHED" --compare --direct "127.0.0.1:$MP" --direct-pid "$MEMCACHED"
load --memcached --command get --target "127.0.0.1:$MC" --cacert "$CA" --pid $CG | tail -n 1 | sed 's/target/cachegate, gets sent as they came (meta_gets = false)/'
load --memcached --command set --target "127.0.0.1:$MT" --cacert "$CA" --pid $CG \
  --backend-pid "$MEMCACHED" --compare --direct "127.0.0.1:$MP" --direct-pid "$MEMCACHED"
echo
echo "== at-rest encryption: the encrypting listener (target) beside the same listener without it (direct)"
for size in 64 16384; do
  for cmd in set get; do
    load --command $cmd --size $size --target "127.0.0.1:$EP" --pid $CG --compare --direct "127.0.0.1:$CP" --direct-pid $CG
  done
done
echo
load --target "127.0.0.1:$CT" --cacert "$CA" --pid $CG --handshakes 2000
load --target "127.0.0.1:$RTLS" --cacert "$CA" --pid "$REDIS" --handshakes 2000 | sed 's/^/redis own TLS: /'
load --target "127.0.0.1:$CT" --cacert "$CA" --pid $CG --idle 1000
load --target "127.0.0.1:$RTLS" --cacert "$CA" --pid "$REDIS" --idle 1000 | sed 's/^/redis own TLS: /'
