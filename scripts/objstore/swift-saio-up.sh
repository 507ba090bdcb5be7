#!/bin/bash
# Starts an OpenStack Swift all-in-one bound to 127.0.0.1: account/container/object servers on a
# plain directory (mount_check off, 1 replica), a proxy with tempauth and bulk/SLO, and a private
# memcached. Tokens live only SWIFT_TOKEN_LIFE seconds (default 20) so token expiry is testable.
# Usage: swift-saio-up.sh DIR -> PIDs in DIR/run/{memcached,swift-*}.pid, logs in DIR/log,
#        state in DIR/swift, settings in DIR/swift.env (tempauth user test:tester / testing).
# Needs scripts/objstore/install.sh first (or SWIFT_BIN=/venv/bin). Stop with down.sh DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/ports.sh"; . "$HERE/wait.sh"
D=${1:?usage: swift-saio-up.sh DIR}
BIN=${SWIFT_BIN:-/usr/bin}
TOKEN_LIFE=${SWIFT_TOKEN_LIFE:-20}
mkdir -p "$D"; D=$(cd "$D" && pwd)
S=$D/swift
rm -rf "$S"; mkdir -p "$S"/{etc,srv/node/d1,cache} "$D"/{run,log}
cd "$S/etc"
cat > swift.conf <<'CONF'
[swift-hash]
swift_hash_path_suffix = island-saio-suffix
swift_hash_path_prefix = island-saio-prefix
[storage-policy:0]
name = gold
default = yes
CONF
for spec in account:$SWIFT_ACCOUNT_PORT container:$SWIFT_CONTAINER_PORT object:$SWIFT_OBJECT_PORT; do
  n=${spec%%:*}; p=${spec##*:}
  cat > $n-server.conf <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $p
devices = $S/srv/node
mount_check = false
disable_fallocate = true
swift_dir = $S/etc
user = root
workers = 1
recon_cache_path = $S/cache
log_name = $n-server
[pipeline:main]
pipeline = $n-server
[app:$n-server]
use = egg:swift#$n
# Updates to the container/account listing (object→container, container→account) wait
# this long before being queued for an updater that this all-in-one does not run; the
# defaults (0.5 s connect, 1–3 s) drop listing entries when the loaded host stalls.
conn_timeout = 10
node_timeout = 60
container_update_timeout = 60
CONF
  "$BIN/swift-ring-builder" $n.builder create 10 1 1 >/dev/null
  "$BIN/swift-ring-builder" $n.builder add r1z1-127.0.0.1:$p/d1 100 >/dev/null
  "$BIN/swift-ring-builder" $n.builder rebalance >/dev/null
done
cat > proxy-server.conf <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $SWIFT_PROXY_PORT
swift_dir = $S/etc
user = root
workers = 1
log_name = proxy-server
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
# Backend timeouts sized for a loaded test host rather than a production LAN (defaults:
# 0.5 s to connect to a storage server, 10 s per read), so scheduling delays are not 503s.
conn_timeout = 10
node_timeout = 60
allow_account_management = true
account_autocreate = true
[filter:tempauth]
use = egg:swift#tempauth
token_life = $TOKEN_LIFE
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test_reader = readonly
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT
# Tempauth keeps every token in memcache. Swift's defaults (2 pooled connections, 0.3 s
# connect / 1 s pool / 2 s I/O timeouts, and after 10 errors in 60 s no memcache at all for
# 60 s) turn a stall of the loaded shared test machine into 60 s in which every token is
# refused (401) and every login fails (503): the flaky conformance failures. Generous
# limits and no error limiting keep the test proxy answering however slow the host is.
memcache_max_connections = 64
connect_timeout = 10
pool_timeout = 30
io_timeout = 30
error_suppression_interval = 0
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
CONF
cd "$D"
start_bg run/memcached.pid log/memcached.log memcached -u root -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 64
for s in account container object proxy; do
  start_bg run/swift-$s.pid log/swift-$s.log "$BIN/swift-$s-server" "$S/etc/$s-server.conf"
done
wait_for 120 log/swift-proxy.log "swift proxy" curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$SWIFT_PROXY_PORT/healthcheck"
# A first login proves memcached and account autocreate work; then wait for the account and
# container servers by creating and removing a probe container.
AUTH=http://127.0.0.1:$SWIFT_PROXY_PORT/auth/v1.0
swift_ready() {
  local h tok url
  h=$(curl -sf -D - -o /dev/null --max-time 5 -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "$AUTH") || return 1
  tok=$(printf '%s' "$h" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')
  url=$(printf '%s' "$h" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-storage-url"{print $2}')
  curl -sf -o /dev/null --max-time 5 -X PUT -H "X-Auth-Token: $tok" "$url/island-probe" || return 1
  curl -sf -o /dev/null --max-time 5 -X DELETE -H "X-Auth-Token: $tok" "$url/island-probe"
}
wait_for 120 log/swift-proxy.log "swift account/container servers" swift_ready
# The container the object-store tests use (each test works under its own unique prefix).
h=$(curl -sf -D - -o /dev/null --max-time 5 -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "$AUTH" | tr -d '\r')
tok=$(printf '%s\n' "$h" | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')
url=$(printf '%s\n' "$h" | awk -F': ' 'tolower($1)=="x-storage-url"{print $2}')
curl -sf -o /dev/null --max-time 10 -X PUT -H "X-Auth-Token: $tok" "$url/island-test"
cat > "$D/swift.env" <<ENV
export ISLAND_TEST_SWIFT_AUTH_URL=$AUTH
export ISLAND_TEST_SWIFT_USER=test:tester
export ISLAND_TEST_SWIFT_KEY=testing
export ISLAND_TEST_SWIFT_CONTAINER=island-test
export ISLAND_TEST_SWIFT_TOKEN_LIFE=$TOKEN_LIFE
ENV
echo "swift ready: ST_AUTH=$AUTH ST_USER=test:tester ST_KEY=testing (token_life=${TOKEN_LIFE}s)"
