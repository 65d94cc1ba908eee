#!/usr/bin/env bash
# verify-containerd.sh ARCHIVE [IMAGE]
#
# Imports an image archive written by build/image into a real containerd
# (its own root, state and socket under a temporary directory, so nothing of
# a containerd already on the machine is touched), lists it, runs it with
# runc, then stops that containerd and removes its directory.
#
# Needs root, containerd, ctr and runc: the local cluster's containerd 2
# from ~/.cache/accel-device-plugin/containerd-v2.4.2 when built (make
# cluster-up), else the ones on PATH; runc from Debian (apt-get install -y
# runc). Example:
#
#   bash build/verify-containerd.sh "$PWD/_output/accel-device-plugin-0.1.0.tar" \
#       localhost/accel-device-plugin:0.1.0
set -euo pipefail

archive=${1:?usage: verify-containerd.sh ARCHIVE [IMAGE]}
image=${2:-localhost/accel-device-plugin:0.1.0}
[ -f "$archive" ] || { echo "verify-containerd: no archive at $archive" >&2; exit 1; }
# The local cluster's containerd 2 (built by `make cluster-up` into the cache) comes first.
cached=${ACCEL_CONTAINERD_DIR:-$HOME/.cache/accel-device-plugin/containerd-v2.4.2}
[ -x "$cached/containerd" ] && PATH=$cached:$PATH
for c in containerd ctr runc; do
  command -v "$c" >/dev/null || { echo "verify-containerd: $c missing (make cluster-up builds containerd and ctr into $cached; runc: apt-get install -y runc)" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/ctrd.XXXXXX)
sock=$dir/containerd.sock
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
  ctr --address "$sock" version >/dev/null 2>&1 && break
  sleep 0.2
done
ctr --address "$sock" version >/dev/null || { cat "$dir/containerd.log" >&2; exit 1; }

ctrk() { ctr --address "$sock" -n k8s.io "$@"; }
set -x
ctrk images import "$archive"
ctrk images ls
ctrk images ls -q | grep -qx "$image"
# With no arguments the entrypoint prints its usage and exits 2.
rc=0
ctrk run --rm "$image" accel-verify-entrypoint || rc=$?
[ "$rc" = 2 ]
# ctr run's arguments replace the entrypoint, so name the binary.
ctrk run --rm "$image" accel-verify-help /accel-plugin list --help
set +x
echo "verify-containerd: OK: $image imported, listed and run"
