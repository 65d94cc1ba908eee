#!/usr/bin/env bash
# Walks through the accel core with 4 simulated devices: run by `make demo-node`.
set -euo pipefail
BIN=$(realpath "${1:-bin/accel-plugin}")
VIEW=$(realpath "${2:-bin/kubelet-view}")
JOB=$(realpath "${3:-_output/accel-job}") # examples/accel-job.c, built by make example
if [ "$(id -u)" != 0 ]; then
  echo "make demo-node mounts a FUSE file system with allow_other: run it as root (sudo make demo-node)" >&2
  exit 1
fi
WORK=$(mktemp -d /tmp/accel-demo.XXXXXX)
DEV=$WORK/dev
SIM_PID=
VIEW_PID=
cleanup() {
  [ -n "$VIEW_PID" ] && kill -TERM "$VIEW_PID" 2>/dev/null && wait "$VIEW_PID" 2>/dev/null || true
  [ -n "$SIM_PID" ] && kill -TERM "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@" || true; }
must() { printf '$ %s\n' "$*"; "$@"; } # the demo fails with it

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

step "A second driver on the same core, and the example workload computing on both"
show "$BIN" sim ctl --dir "$DEV" add 1 fakenpu
NPU=$("$BIN" list --dir "$DEV" | awk '$2 == "fakenpu" {print $1; exit}')
must "$JOB" "$DEV/ac0"
must "$JOB" "$DEV/$NPU"
show "$BIN" list --dir "$DEV"

step "Silent data corruption: the device stays operational, the example's check fails"
show "$BIN" sim ctl --dir "$DEV" fault "$NPU" corrupt
printf '$ %s\n' "$JOB $DEV/$NPU"
if "$JOB" "$DEV/$NPU"; then echo "demo: accel-job accepted a wrong answer" >&2; exit 1; fi
show "$BIN" sim ctl --dir "$DEV" recover "$NPU"

step "The device plugin: accel-plugin serve, registered with kubelet's real device manager"
echo "kubelet-view runs kubelet's device manager (k8s.io/kubernetes v1.37.2) in a private mount namespace"
echo "and admits two pods; \$ $(basename "$VIEW") --pod train=accel.io/ac:2 --pod watch=accel.io/ac-monitor:3 -- accel-plugin serve --dev-dir $DEV"
"$VIEW" --plugin-log "$WORK/plugin.log" --pod train=accel.io/ac:2 --pod watch=accel.io/ac-monitor:3 \
  -- "$BIN" serve --dev-dir "$DEV" --monitor-slots 8 --metrics-addr 127.0.0.1:0 >"$WORK/kubelet.txt" 2>"$WORK/kubelet.err" &
VIEW_PID=$!
SEEN=0
# await PATTERN: wait (at most 10 s) for a new kubelet-view line matching PATTERN, then print the new lines.
await() {
  for _ in $(seq 200); do
    # grep reads to the end (not -q): tail never writes into a closed pipe (SIGPIPE under pipefail)
    if tail -n +$((SEEN + 1)) "$WORK/kubelet.txt" | grep -- "$1" >/dev/null; then break; fi
    kill -0 "$VIEW_PID" 2>/dev/null || { cat "$WORK/kubelet.err" "$WORK/plugin.log"; exit 1; }
    sleep 0.05
  done
  tail -n +$((SEEN + 1)) "$WORK/kubelet.txt"
  SEEN=$(wc -l <"$WORK/kubelet.txt")
}
await "pod watch"

step "Health follows the device both ways: fault, then reset"
show "$BIN" sim ctl --dir "$DEV" fault ac1
await "accel.io/ac capacity=4 allocatable=3"
show "$BIN" sim ctl --dir "$DEV" reset ac1
await "accel.io/ac capacity=4 allocatable=4"

step "Hot-plug reaches kubelet within milliseconds"
show "$BIN" sim ctl --dir "$DEV" add
await "accel.io/ac capacity=5 allocatable=5"
echo "plugin log (structured, every health change with the device ID and reason):"
grep -E "health changed|device found|registered" "$WORK/plugin.log" | tail -4 | cut -c1-200

step "Stop kubelet-view: SIGTERM to the plugin removes its sockets; kubelet marks the resources unusable"
kill -TERM "$VIEW_PID"; wait "$VIEW_PID" || true; VIEW_PID=
tail -n +$((SEEN + 1)) "$WORK/kubelet.txt"

step "Stop the simulator (SIGTERM): it unmounts and exits 0"
kill -TERM "$SIM_PID"; wait "$SIM_PID"; echo "simulator exit status: $?"; SIM_PID=
if grep -q " $DEV " /proc/mounts; then echo "mount left behind!"; exit 1; fi
echo "no mount left behind"
