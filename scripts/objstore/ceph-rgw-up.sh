#!/bin/bash
# Starts a one-node Ceph cluster (1 mon + 1 memstore OSD, no mgr, auth none) and radosgw
# (S3 + Swift APIs) bound to 127.0.0.1, all state under DIR.
# Usage: ceph-rgw-up.sh DIR   -> PIDs in DIR/run/{ceph-mon,ceph-osd,rgw}.pid, logs in DIR/log,
#        state in DIR/ceph, connection settings in DIR/s3.env (S3 at http://127.0.0.1:$RGW_PORT, keys RGWAK/RGWSK).
# Needs scripts/objstore/install.sh first. Stop with down.sh DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/ports.sh"; . "$HERE/wait.sh"
D=${1:?usage: ceph-rgw-up.sh DIR}
mkdir -p "$D"; D=$(cd "$D" && pwd)
S=$D/ceph
rm -rf "$S"; mkdir -p "$S"/{mon-a,osd-0,rgw} "$D"/{run,log}
cd "$D"
FSID=$(uuidgen)
MONADDR="[v2:127.0.0.1:$CEPH_MON_V2_PORT,v1:127.0.0.1:$CEPH_MON_V1_PORT]"
cat > "$S/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = $MONADDR
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
# Without crc mode radosgw loops on auth error -13 when auth is none.
ms client mode = crc
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = $S
admin socket = $S/\$name.asok
log file = $D/log/ceph-\$name.log
keyring = /dev/null
osd objectstore = memstore
memstore device bytes = 4294967296
[mon.a]
mon data = $S/mon-a
[osd.0]
osd data = $S/osd-0
[client.rgw.a]
# tcp_nodelay: without it small requests wait for delayed ACKs (Nagle), ~40 ms each.
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw data = $S/rgw
rgw enable apis = s3, swift, swift_auth, admin
CONF
C=(-c "$S/ceph.conf")
monmaptool --create --addv a "$MONADDR" --fsid "$FSID" \
  --enable-all-features --set-min-mon-release pacific "$S/monmap" >/dev/null
ceph-mon "${C[@]}" --mkfs -i a --monmap "$S/monmap" >log/ceph-mon-mkfs.out 2>&1
start_bg run/ceph-mon.pid log/ceph-mon.out ceph-mon "${C[@]}" -i a -f
OSDUUID=$(uuidgen)
ID=$(timeout 60 ceph "${C[@]}" osd new "$OSDUUID")
ceph-osd "${C[@]}" -i "$ID" --mkfs --osd-uuid "$OSDUUID" >log/ceph-osd-mkfs.out 2>&1
start_bg run/ceph-osd.pid log/ceph-osd.out ceph-osd "${C[@]}" -i "$ID" -f
osd_up() { timeout 10 ceph "${C[@]}" osd stat 2>/dev/null | grep -q '1 up'; }
wait_for 120 log/ceph-osd.out "ceph osd" osd_up
start_bg run/rgw.pid log/rgw.out radosgw "${C[@]}" -n client.rgw.a -f
wait_for 120 log/rgw.out "radosgw" curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$RGW_PORT/"
timeout 60 radosgw-admin "${C[@]}" user create --uid=test --display-name=test \
  --access-key=RGWAK --secret-key=RGWSK >/dev/null
# The bucket the object-store tests use (each test works under its own unique prefix).
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --aws-sigv4 "aws:amz:us-east-1:s3" \
  --user RGWAK:RGWSK -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X PUT "http://127.0.0.1:$RGW_PORT/island-test")
[ "$code" = 200 ] || { echo "objstore: creating bucket island-test failed: HTTP $code" >&2; exit 1; }
cat > "$D/s3.env" <<ENV
export ISLAND_TEST_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
export ISLAND_TEST_S3_ACCESS_KEY_ID=RGWAK
export ISLAND_TEST_S3_SECRET_ACCESS_KEY=RGWSK
export ISLAND_TEST_S3_REGION=us-east-1
export ISLAND_TEST_S3_BUCKET=island-test
ENV
echo "radosgw ready: S3 http://127.0.0.1:$RGW_PORT (RGWAK/RGWSK)"
