#!/bin/sh
# A fake systemctl for tests (ATVM_SYSTEMCTL points here). It knows the verbs the tools use:
#   start <unit>         run the unit's ExecStart (read from the rendered unit file in
#                        $FAKE_SYSTEMD_UNITS, %i replaced) detached in its own session,
#                        honouring UnsetEnvironment=; output goes to $FAKE_SYSTEMD_STATE/<unit>.out
#   stop <unit>          like KillMode=mixed: SIGTERM to the main process, wait up to
#                        $FAKE_STOP_TIMEOUT seconds, then SIGKILL whatever is left in its session
#   is-active <unit>     "active" (0) while the main process lives, else "inactive" (3)
#   reset-failed <unit>  no-op
# $FAKE_SYSTEMCTL_FAIL="start:atvm-runner@" makes `start` of matching units fail.
# Every call is appended to $FAKE_SYSTEMD_STATE/calls.log.
set -u
units=${FAKE_SYSTEMD_UNITS:?}
state=${FAKE_SYSTEMD_STATE:?}
mkdir -p "$state"
echo "$*" >> "$state/calls.log"
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
verb=${1:-}; unit=${2:-}
pidfile="$state/$unit.pid"

# "<state letter> <start time>" of a pid (fields 3 and 22 of /proc/<pid>/stat).
proc_of() {
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $1, $20 }'
}

# The pidfile holds "<pid> <start time>": a pid reused by another process since (the
# machine runs other suites too) is not the unit's, and is never signalled.
alive() {
  [ -f "$pidfile" ] || return 1
  read -r pid started < "$pidfile" || return 1
  # shellcheck disable=SC2046 # split into the two fields on purpose
  set -- $(proc_of "$pid")
  [ $# -eq 2 ] && [ "$1" != Z ] && [ "$1" != X ] && [ "$2" = "${started:-$2}" ]
}

case "${FAKE_SYSTEMCTL_FAIL:-}" in
  "$verb:"*) case "$unit" in "${FAKE_SYSTEMCTL_FAIL#*:}"*)
      echo "Job for $unit failed because the control process exited with error code." >&2; exit 1 ;; esac ;;
esac

case "$verb" in
  start)
    alive && exit 0
    template=$(printf '%s' "$unit" | sed 's/@[^@]*\.service$/@.service/')
    instance=$(printf '%s' "$unit" | sed 's/^[^@]*@//; s/\.service$//')
    file="$units/$template"
    [ -f "$file" ] || { echo "Failed to start $unit: Unit $template not found." >&2; exit 5; }
    cmd=$(sed -n 's/^ExecStart=//p' "$file" | sed "s/%i/$instance/g")
    unset_vars=$(sed -n 's/^UnsetEnvironment=//p' "$file")
    for v in $unset_vars; do unset "$v"; done
    JOURNAL_STREAM=8:424242 setsid sh -c "exec $cmd" >> "$state/$unit.out" 2>&1 < /dev/null &
    pid=$!
    # shellcheck disable=SC2046 # split into the two fields on purpose
    set -- $(proc_of "$pid")
    echo "$pid ${2:-}" > "$pidfile"
    ;;
  stop)
    alive || exit 0
    kill -TERM "$pid" 2>/dev/null
    i=0
    while alive && [ $i -lt $(( ${FAKE_STOP_TIMEOUT:-5} * 20 )) ]; do sleep 0.05; i=$((i + 1)); done
    pkill -KILL -s "$pid" 2>/dev/null
    while alive; do sleep 0.05; done
    ;;
  is-active)
    if alive; then echo active; exit 0; else echo inactive; exit 3; fi
    ;;
  reset-failed)
    ;;
  *)
    echo "fake systemctl: unsupported verb '$verb'" >&2; exit 1
    ;;
esac
