#!/bin/bash
# Stops every server that ceph-rgw-up.sh / swift-saio-up.sh started under DIR, by the PIDs
# they recorded in DIR/run/*.pid (never by process name: other runs may share the machine).
# Usage: down.sh DIR
set -uo pipefail
D=${1:?usage: down.sh DIR}
[ -d "$D/run" ] || exit 0
pids=()
for f in "$D"/run/*.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  if [[ "$p" =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null && pids+=("$p")
  fi
  rm -f "$f"
done
# Give them 10 s to exit cleanly, then SIGKILL whatever is left of the same PIDs.
for _ in $(seq 1 50); do
  alive=()
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  [ ${#alive[@]} -eq 0 ] && exit 0
  sleep 0.2
done
for p in "${alive[@]}"; do kill -KILL "$p" 2>/dev/null; done
exit 0
