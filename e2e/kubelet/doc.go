// Package kubelet tests accel-plugin against kubelet's real device manager
// (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager), the code that runs in
// every kubelet, rather than against a stand-in.
//
// It is a separate Go module so the main module does not depend on
// k8s.io/kubernetes. The tests run the real `accel-plugin sim` and
// `accel-plugin serve` binaries, built from this repository, as separate
// processes, and the device manager in the test process. The manager only
// listens on /var/lib/kubelet/device-plugins/kubelet.sock, so the test
// binary re-executes itself in a private mount namespace with a tmpfs on
// that directory: a kubelet running on the same machine is never touched.
package kubelet
