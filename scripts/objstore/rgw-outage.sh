#!/bin/bash
# Simulates an S3 outage: stops the radosgw that ceph-rgw-up.sh started under DIR (by the PID
# in DIR/run/rgw.pid), keeps it down SECONDS, starts it again with the same configuration
# and waits until it answers. Prints how long the restart took. Used by the fault tests
# (tests/it/objstore_faults.rs) with DIR = $ISLAND_TEST_OBJSTORE_DIR.
# Usage: rgw-outage.sh DIR SECONDS
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/ports.sh"; . "$HERE/wait.sh"
D=${1:?usage: rgw-outage.sh DIR SECONDS}
DOWN=${2:?usage: rgw-outage.sh DIR SECONDS}
D=$(cd "$D" && pwd)
pid=$(cat "$D/run/rgw.pid")
[[ "$pid" =~ ^[0-9]+$ ]] || { echo "rgw-outage: bad pid file" >&2; exit 1; }
kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
echo "rgw-outage: radosgw $pid stopped"
sleep "$DOWN"
t0=$(date +%s.%N)
cd "$D"
start_bg run/rgw.pid log/rgw-restart.out radosgw -c "$D/ceph/ceph.conf" -n client.rgw.a -f
wait_for 120 log/rgw-restart.out "radosgw" curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$RGW_PORT/"
t1=$(date +%s.%N)
echo "rgw-outage: radosgw $(cat run/rgw.pid) answering $(echo "$t1 - $t0" | bc) s after restart"
