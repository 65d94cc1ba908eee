// Package kind runs the end-to-end suite's clusters on kind (Kubernetes in
// Docker, sigs.k8s.io/kind) on machines with no image registry: it builds a
// kind node image offline, starts and stops dockerd when none runs, applies
// the host fixes this machine needs (and only those), creates and deletes
// kind clusters of one or several nodes, and loads the project's images
// into them.
//
// The node image is assembled the way `kind build node-image` assembles
// one, from parts that come from Go modules and Debian packages only:
//   - kind's base files (entrypoint, containerd config, kubelet unit) are
//     read from the sigs.k8s.io/kind module download at build time, and the
//     steps of kind's images/base/Dockerfile are applied to a Debian rootfs
//     made by mmdebstrap;
//   - the Kubernetes binaries and containerd are the local cluster's cached
//     builds (package cluster), plus kubeadm, kubectl and kube-proxy built
//     the same way;
//   - etcd, CoreDNS, crictl, the CNI plugins and kube-router (the CNI that
//     routes between nodes) are built from their Go modules;
//   - the images kubeadm needs are written with go-containerregistry and
//     imported into the node's containerd store before the image is made.
//
// Everything built is cached by version under the cache directory
// (default ~/.cache/accel-device-plugin), shared with the local cluster.
//
// Host fixes, each applied only when detected:
//   - a capability bounding set without a capability docker grants
//     privileged containers (CAP_SYS_RESOURCE here): dockerd, when started
//     here, gets a runc wrapper that drops what the host lacks;
//   - the same lack makes negative oom_score_adj fail: the nodes' containerd
//     gets restrict_oom_score_adj;
//   - cgroup v1: the nodes' kubelet gets failCgroupV1: false.
//
// dockerd changes the host's iptables (FORWARD policy DROP, DOCKER chains):
// when this package started dockerd, stopping it restores the rules it
// saved before the start, and removes what dockerd left (its bridge, its
// mounts).
package kind
