#!/usr/bin/env bash
# The main demo (`make demo`): the chart on a real cluster, real pods asking
# for accel.io/ac, and a short report of what they saw. API=dra (`make demo
# API=dra`) installs the DRA driver instead: the same pods, one of them with
# a ResourceClaimTemplate, the others still asking for accel.io/ac and
# accel.io/ac-monitor (served through the DeviceClasses).
# The node is mixed: two devices of each simulated driver (fakedev, a generic
# accelerator; fakenpu, a DNN engine) on one accel core, and example pods
# (examples/accel-job.c, image JOB_IMAGE) compute on them.
#   [API=devicePlugin|dra] [JOB_IMAGE=...] scripts/demo-cluster.sh KUBECONFIG HELM [IMAGE] [BUSYBOX]
set -euo pipefail
export KUBECONFIG=${1:?kubeconfig}
HELM=${2:?helm binary}
IMAGE=${3:-localhost/accel-device-plugin:$(cat "$(dirname "$0")/../VERSION")}
DEVDIR=/run/accel/dev # the chart's devDir (values.yaml), where the simulator's nodes are
BUSYBOX=${4:-localhost/busybox:1.36}
KUBECTL=${KUBECTL:-kubectl}
API=${API:-devicePlugin}
JOB_IMAGE=${JOB_IMAGE:-localhost/accel-job:$(cat "$(dirname "$0")/../VERSION")}
case $API in devicePlugin | dra) ;; *) echo "API must be devicePlugin or dra, got $API" >&2; exit 2 ;; esac
NS=accel-demo
CHART=$(cd "$(dirname "$0")/../charts/accel-device-plugin" && pwd)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
k() { "$KUBECTL" "$@"; }
# logs POD N: the pod's log once it has N lines (a Ready container may not
# have written them yet), whole: no reader stops early, so kubectl never
# writes into a closed pipe (SIGPIPE under pipefail). Waits up to 30 s.
logs() {
  local out
  for _ in $(seq 60); do
    out=$(k -n "$NS" logs "$1")
    [ "$(printf '%s\n' "$out" | grep -c .)" -ge "$2" ] && break
    sleep 0.5
  done
  printf '%s\n' "$out"
}

step "Install the chart: simulator (4 devices on 2 NUMA nodes: 2 fakedev, 2 fakenpu) + $([ "$API" = dra ] && echo "DRA driver" || echo "device plugin")"
"$HELM" upgrade --install accel "$CHART" --namespace "$NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set simulator.drivers='fakedev:2\,fakenpu:2' \
  --set simulator.numaNodes=2 --set api="$API" --wait --timeout 3m >/dev/null
k -n "$NS" get daemonsets,pods -o wide

# devices: one line per ResourceSlice device (name, kind, serial, NUMA node, taints).
devices() {
  k get resourceslices --field-selector spec.driver=accel.io -o jsonpath='{range .items[*].spec.devices[*]}{"  "}{.name}{"\t"}{.attributes.kind.string}{"\t"}{.attributes.serial.string}{"\tnuma "}{.attributes.numaNode.int}{"\t"}{.taints}{"\n"}{end}'
}
if [ "$API" = dra ]; then
  step "What the node offers (ResourceSlices, DeviceClasses)"
  for _ in $(seq 120); do
    [ "$(devices | grep -c .)" = 8 ] && break; sleep 0.5
  done
  devices
  k get deviceclasses -o custom-columns='CLASS:.metadata.name,EXTENDED RESOURCE:.spec.extendedResourceName'
else
  step "What the node offers (capacity / allocatable, labels)"
  for _ in $(seq 120); do
    a=$(k get nodes -o jsonpath='{.items[0].status.allocatable.accel\.io/ac}')
    [ "$a" = 4 ] && break; sleep 0.5
  done
  k get nodes -o jsonpath='{range .items[*]}{.metadata.name}: accel.io/ac {.status.capacity.accel\.io/ac}/{.status.allocatable.accel\.io/ac}, accel.io/ac-monitor {.status.capacity.accel\.io/ac-monitor}/{.status.allocatable.accel\.io/ac-monitor}{"\n"}{end}'
  k get nodes -o json | grep -o '"accel.io/ac\.[a-z]*": "[^"]*"' | sed 's/^/  label /'
fi

# pod NAME RESOURCE COUNT SCRIPT [privileged] [restartPolicy]: a busybox pod running SCRIPT.
# RESOURCE claim:TEMPLATE gives it a ResourceClaim "ac" from that template instead.
pod() {
  local name=$1 res=$2 count=$3 script=$4 priv=${5:-} restart=${6:-Always}
  {
    echo "apiVersion: v1"
    echo "kind: Pod"
    echo "metadata: {name: $name}"
    echo "spec:"
    echo "  terminationGracePeriodSeconds: 0"
    echo "  restartPolicy: $restart"
    [ "${res#claim:}" != "$res" ] && echo "  resourceClaims: [{name: ac, resourceClaimTemplateName: ${res#claim:}}]"
    [ -n "$priv" ] && echo "  volumes: [{name: run, hostPath: {path: /run/accel}}]"
    echo "  containers:"
    echo "  - name: main"
    echo "    image: $BUSYBOX"
    echo "    imagePullPolicy: IfNotPresent"
    echo "    command: [sh, -c]"
    echo "    args:"
    echo "    - |"
    printf '%s\n' "$script" | sed 's/^/      /'
    case $res in
    claim:*) echo "    resources: {claims: [{name: ac}]}" ;;
    ?*) echo "    resources: {limits: {$res: $count}}" ;;
    esac
    if [ -n "$priv" ]; then
      echo "    securityContext: {privileged: true}"
      echo "    volumeMounts: [{name: run, mountPath: /run/accel, mountPropagation: HostToContainer}]"
    fi
  } | k -n "$NS" apply -f - >/dev/null
}

TRAIN_RES=accel.io/ac
if [ "$API" = dra ]; then
  step "A pod with a ResourceClaimTemplate (class ac.accel.io) opens its device and holds it"
  printf '%s\n' "apiVersion: resource.k8s.io/v1" "kind: ResourceClaimTemplate" "metadata: {name: one-accel}" \
    "spec: {spec: {devices: {requests: [{name: ac, exactly: {deviceClassName: ac.accel.io}}]}}}" | k -n "$NS" apply -f - >/dev/null
  TRAIN_RES=claim:one-accel
else
  step "A pod asking for accel.io/ac: 1 opens its device and holds it"
fi
pod train "$TRAIN_RES" 1 'd=/dev/accel/$ACCEL_VISIBLE_DEVICES; exec 3<>$d && echo "train: opened $d (ACCEL_VISIBLE_DEVICES=$ACCEL_VISIBLE_DEVICES)"; ls -l /dev/accel; cat ${d}_monitor; exec sleep 3600'
k -n "$NS" wait --for=condition=Ready pod/train --timeout=2m >/dev/null
TRAIN=$(logs train 5)
printf '%s\n' "$TRAIN" | sed 's/ *$//'
DEV=$(printf '%s\n' "$TRAIN" | sed -n 's/^train: opened \/dev\/accel\/\([a-z0-9]*\).*/\1/p')

step "Two monitor pods (accel.io/ac-monitor: 4 each) share every device's monitor node"
for m in watch-a watch-b; do
  pod $m accel.io/ac-monitor 4 'echo "$HOSTNAME: ACCEL_MONITOR_DEVICES=$ACCEL_MONITOR_DEVICES"; for f in /dev/accel/*_monitor; do cat $f; done; exec sleep 3600'
done
k -n "$NS" wait --for=condition=Ready pod/watch-a pod/watch-b --timeout=2m >/dev/null
logs watch-a 5 | sed -n '1,3{s/ *$//;p}'

step "A second client for $DEV (a privileged pod going through the host path) gets EBUSY"
pod second "" "" "(exec 3<>/run/accel/dev/$DEV) 2>&1 && echo opened || echo 'second client: open failed (EBUSY), as designed'" yes Never
k -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/second --timeout=2m >/dev/null
k -n "$NS" logs second

step "A pod asking for more devices than are free stays Pending"
pod greedy accel.io/ac 4 'sleep 3600'
for _ in $(seq 60); do
  msg=$(k -n "$NS" get events --field-selector involvedObject.name=greedy -o jsonpath='{.items[*].message}')
  [ -n "$msg" ] && break; sleep 0.5
done
echo "greedy: $(k -n "$NS" get pod greedy -o jsonpath='{.status.phase}'): $msg"

step "Device health reaches the pod: a fault on $DEV, then a reset (allocatedResourcesStatus)"
SIM=$(k -n "$NS" get pods -l app.kubernetes.io/component=sim -o jsonpath='{.items[0].metadata.name}')
health() { k -n "$NS" get pod train -o jsonpath='{.status.containerStatuses[0].allocatedResourcesStatus}'; }
await_health() {
  k -n "$NS" wait pod/train --timeout=30s \
    --for=jsonpath='{.status.containerStatuses[0].allocatedResourcesStatus[0].resources[0].health}'="$1" >/dev/null
  echo "train: $(health)"
}
k -n "$NS" exec "$SIM" -c sim -- /accel-plugin sim ctl --dir "$DEVDIR" fault "$DEV" malfunction
await_health Unhealthy
[ "$API" = dra ] && devices | grep -F "$(printf '  %s\t' "$DEV")"
k -n "$NS" exec "$SIM" -c sim -- /accel-plugin sim ctl --dir "$DEVDIR" reset "$DEV"
await_health Healthy
[ "$API" = dra ] && devices | grep -F "$(printf '  %s\t' "$DEV")"

step "The example workload: a pod with the 3 free devices maps each one's memory, submits a job, checks the answer"
# train holds one device: the other three include both drivers.
{
  echo "apiVersion: v1"
  echo "kind: Pod"
  echo "metadata: {name: job}"
  echo "spec:"
  echo "  restartPolicy: Never"
  echo "  containers:"
  echo "  - {name: main, image: $JOB_IMAGE, imagePullPolicy: IfNotPresent, resources: {limits: {accel.io/ac: 3}}}"
} | k -n "$NS" apply -f - >/dev/null
k -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/job --timeout=2m >/dev/null ||
  { echo "job did not succeed:"; k -n "$NS" logs job; exit 1; }
k -n "$NS" logs job | sed 's/^/  /'
echo "The utilisation the jobs caused, from the devices' info (accel-plugin list in the simulator):"
k -n "$NS" exec "$SIM" -c sim -- /accel-plugin list --dir "$DEVDIR"
PLUGIN=$(k -n "$NS" get pods -l app.kubernetes.io/component=plugin -o jsonpath='{.items[0].metadata.name}')
echo "and the plugin's /metrics:"
k get --raw "/api/v1/namespaces/$NS/pods/$PLUGIN:9490/proxy/metrics" 2>/dev/null |
  grep -E '^accel_device_(jobs_completed_total|busy_seconds_total|info)\{' | sed 's/^/  /' ||
  echo "  (the API server cannot reach the pod network here; read them at http://<pod IP>:9490/metrics)"

step "Report"
echo "node: $(k get nodes -o jsonpath='{.items[0].metadata.name}')"
echo "pods:"; k -n "$NS" get pods
if [ "$API" = dra ]; then
  echo "claims:"; k -n "$NS" get resourceclaims -o custom-columns='CLAIM:.metadata.name,DEVICES:.status.allocation.devices.results[*].device'
fi
echo
echo "Clean up with: make demo-down"
