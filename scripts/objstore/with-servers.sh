#!/bin/bash
# Runs CMD with a real S3 server (Ceph radosgw) and a real Swift (all-in-one) on loopback:
# installs them if needed, starts both in a fresh temporary directory, exports the
# ISLAND_TEST_S3_* and ISLAND_TEST_SWIFT_* settings the object-store tests read (and the
# same servers as AWS_* / ST_* for the CLI), runs CMD,
# and stops every server by PID on exit (also on failure or interrupt). Exits with CMD's code.
# Usage: scripts/objstore/with-servers.sh CMD [ARGS...]
#   ISLAND_OBJSTORE_KEEP=1 keeps the temporary directory (logs) after the run.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: with-servers.sh CMD [ARGS...]" >&2; exit 2; }

t0=$SECONDS
"$HERE/install.sh" || { echo "objstore: install failed" >&2; exit 1; }
t_install=$((SECONDS - t0))

# Pick a port offset whose main ports are free, so concurrent runs on one machine coexist.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${ISLAND_OBJSTORE_PORT_OFFSET:-}" ]; then
  for off in 0 100 200 300 400 500 600 700; do
    ok=1
    for base in 3300 6789 7480 8080 6200 6201 6202 11212; do
      port_free $((base + off)) || { ok=0; break; }
    done
    if [ $ok = 1 ]; then export ISLAND_OBJSTORE_PORT_OFFSET=$off; break; fi
  done
  [ -n "${ISLAND_OBJSTORE_PORT_OFFSET:-}" ] || { echo "objstore: no free port range" >&2; exit 1; }
fi

DIR=$(mktemp -d /tmp/island-objstore.XXXXXX)
cleanup() {
  "$HERE/down.sh" "$DIR"
  if [ "${ISLAND_OBJSTORE_KEEP:-0}" = 1 ]; then
    echo "objstore: kept $DIR"
  else
    rm -rf "$DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t1=$SECONDS
# Both clusters start in parallel; each script waits for its own health checks.
"$HERE/ceph-rgw-up.sh" "$DIR" > "$DIR/ceph-up.log" 2>&1 & ceph_job=$!
"$HERE/swift-saio-up.sh" "$DIR" > "$DIR/swift-up.log" 2>&1 & swift_job=$!
rc_ceph=0; rc_swift=0
wait $ceph_job || rc_ceph=$?
wait $swift_job || rc_swift=$?
cat "$DIR/ceph-up.log" "$DIR/swift-up.log"
if [ $rc_ceph != 0 ] || [ $rc_swift != 0 ]; then
  echo "objstore: server start failed (ceph rc=$rc_ceph, swift rc=$rc_swift); logs in $DIR/log" >&2
  for f in "$DIR"/log/*; do echo "== $f"; tail -n 20 "$f"; done >&2
  exit 1
fi
t_start=$((SECONDS - t1))
echo "objstore: install check ${t_install}s, startup ${t_start}s (port offset $ISLAND_OBJSTORE_PORT_OFFSET)"

. "$DIR/s3.env"
. "$DIR/swift.env"
# The same servers under the variables users set, so `island` and `open_store` reach them
# through plain s3://island-test/... and swift://island-test/... URLs.
export AWS_ENDPOINT_URL=$ISLAND_TEST_S3_ENDPOINT AWS_REGION=$ISLAND_TEST_S3_REGION
export AWS_ACCESS_KEY_ID=$ISLAND_TEST_S3_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$ISLAND_TEST_S3_SECRET_ACCESS_KEY
export ST_AUTH=$ISLAND_TEST_SWIFT_AUTH_URL ST_USER=$ISLAND_TEST_SWIFT_USER ST_KEY=$ISLAND_TEST_SWIFT_KEY
# Where the servers' state, logs and PID files are, for tests that stop and restart one
# (scripts/objstore/rgw-outage.sh).
export ISLAND_TEST_OBJSTORE_DIR=$DIR
# Test runs that need a server fail instead of skipping when this is set.
export ISLAND_TEST_REQUIRE_SERVERS=1

"$@"
rc=$?
exit $rc
