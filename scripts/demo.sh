#!/usr/bin/env bash
# Walks through the accel core with 4 simulated devices: run by `make demo`.
set -euo pipefail
BIN=$(realpath "${1:-bin/accel-plugin}")
if [ "$(id -u)" != 0 ]; then
  echo "make demo mounts a FUSE file system with allow_other: run it as root (sudo make demo)" >&2
  exit 1
fi
WORK=$(mktemp -d /tmp/accel-demo.XXXXXX)
DEV=$WORK/dev
SIM_PID=
cleanup() {
  [ -n "$SIM_PID" ] && kill -TERM "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@" || true; }

step "Start the simulator: 4 devices on 2 NUMA nodes, nodes mounted on $DEV"
"$BIN" sim --devices 4 --numa-nodes 2 --dir "$DEV" --log-level warn 2>"$WORK/sim.log" &
SIM_PID=$!
# The simulator's event stream exists once the mount is live.
for _ in $(seq 100); do [ -e "$DEV/sys/events" ] && break; kill -0 "$SIM_PID" || { cat "$WORK/sim.log"; exit 1; }; sleep 0.05; done
show ls -l "$DEV"

step "Watch device events (a consumer blocked on sys/events, no polling)"
"$BIN" events --dir "$DEV" --count 5 >"$WORK/events.txt" 2>"$WORK/events.log" &
EVENTS_PID=$!
until grep -q watching "$WORK/events.log" 2>/dev/null; do kill -0 "$EVENTS_PID"; sleep 0.02; done

step "What an operator types first"
show "$BIN" list --dir "$DEV"
show "$BIN" info "$DEV/ac0"
echo "\$ cat $DEV/ac2_monitor"; cat "$DEV/ac2_monitor"

step "The compute node has one client at a time"
exec 3<>"$DEV/ac0"
echo "this shell (pid $$) opened ac0 as fd 3"
echo "\$ (a second process opens ac0)"
( exec 4<>"$DEV/ac0" ) 2>&1 | sed 's/^.*: /open: /' || true
echo "\$ (the monitor node is shared: 3 more readers while ac0 is held)"
exec 5<"$DEV/ac0_monitor" 6<"$DEV/ac0_monitor" 7<"$DEV/ac0_monitor"
show "$BIN" info "$DEV/ac0"
exec 3>&- 5<&- 6<&- 7<&-
echo "closed: ac0 is free again and reopens at once"
exec 3<>"$DEV/ac0" && echo "reopened ac0" && exec 3>&-

step "Fault injection and reset"
show "$BIN" sim ctl --dir "$DEV" fault ac1
( exec 4<>"$DEV/ac1" ) 2>&1 | sed 's/^.*: /compute open of a malfunctioning device: /' || true
echo "\$ cat $DEV/ac1_monitor"; cat "$DEV/ac1_monitor"
show "$BIN" sim ctl --dir "$DEV" reset ac1

step "Hot-plug and hot-unplug"
show "$BIN" sim ctl --dir "$DEV" add
show "$BIN" sim ctl --dir "$DEV" remove ac3
show "$BIN" sim ctl --dir "$DEV" remove ac3
show "$BIN" list --dir "$DEV"

step "What the event consumer saw"
wait "$EVENTS_PID" || true
cat "$WORK/events.txt"

step "Stop the simulator (SIGTERM): it unmounts and exits 0"
kill -TERM "$SIM_PID"; wait "$SIM_PID"; echo "simulator exit status: $?"; SIM_PID=
if grep -q " $DEV " /proc/mounts; then echo "mount left behind!"; exit 1; fi
echo "no mount left behind"
