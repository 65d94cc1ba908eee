// Package suite is the end-to-end test of accel-device-plugin on a real
// cluster: it installs the Helm chart with simulated devices and checks,
// with real pods, what a user would: capacity, exclusive devices, shared
// monitors, health (on the node and in the pod's status), restarts and a
// clean uninstall. The device story runs twice: devices handed over as
// bind mounts, then through CDI (cdi.enabled), which a pod must not notice.
// Those stories want a single-node cluster and skip on a bigger one;
// TestMultiNode is the story of a cluster with two workers or more (make
// e2e-kind's second topology) and skips on a smaller one.
//
// It needs a cluster and is configured by the environment (`make e2e` sets
// it for the local cluster, `make e2e-kind` for kind):
//
//	ACCEL_E2E_KUBECONFIG       kubeconfig of the cluster (required; without it the tests skip)
//	ACCEL_E2E_HELM             helm binary (default: helm on PATH)
//	ACCEL_E2E_IMAGE            the plugin image (default localhost/accel-device-plugin:$(cat VERSION))
//	ACCEL_E2E_BUSYBOX          a busybox image present on the node (default localhost/busybox:1.36)
//	ACCEL_E2E_RESTART_KUBELET  shell command restarting the node's kubelet (empty: those steps are skipped)
//	ACCEL_E2E_KUBELET_RESTARTS kubelet restarts of the crash-looping pod's step (default 10)
//	ACCEL_E2E_CTR              ctr against the node's containerd in namespace k8s.io, a command prefix
//	                           (`make e2e`: localcluster ctr); empty: the container records are not read
//
// Node-side checks run in pods (hostPID, hostPath), so the same tests work
// on a local cluster and on kind.
package suite
