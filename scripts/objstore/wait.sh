# Sourced by the objstore scripts: bounded waiting, so a server that never comes up fails
# the script with its log instead of hanging CI.
# wait_for SECONDS LOGFILE DESCRIPTION COMMAND...
wait_for() {
  local secs=$1 log=$2 what=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "objstore: $what not ready after ${secs}s; last lines of $log:" >&2
      tail -n 30 "$log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.3
  done
}
# start_bg PIDFILE LOGFILE COMMAND... : start a server in the background and record its PID.
start_bg() {
  local pidfile=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 &
  echo $! >"$pidfile"
}
