# Sourced by the objstore scripts: every port they use, shifted by ISLAND_OBJSTORE_PORT_OFFSET
# (default 0) so several test runs on one machine do not collide.
OFF=${ISLAND_OBJSTORE_PORT_OFFSET:-0}
CEPH_MON_V2_PORT=$((3300 + OFF))
CEPH_MON_V1_PORT=$((6789 + OFF))
RGW_PORT=$((7480 + OFF))
SWIFT_PROXY_PORT=$((8080 + OFF))
SWIFT_OBJECT_PORT=$((6200 + OFF))
SWIFT_CONTAINER_PORT=$((6201 + OFF))
SWIFT_ACCOUNT_PORT=$((6202 + OFF))
MEMCACHED_PORT=$((11212 + OFF))
