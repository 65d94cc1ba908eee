// Package cluster runs a real single-node Kubernetes cluster on this machine
// for the end-to-end tests: etcd, containerd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kubelet as host processes.
//
// Everything it starts, writes and changes is recorded under StateDir and
// RunDir so that Down can undo it. The Kubernetes binaries are built from the
// Kubernetes Go module of the e2e module, containerd (ContainerdVersion:
// daemon, runc shim, ctr) from its own module with go install; both are
// cached by version and built atomically. runc is Debian's.
//
// Host pitfalls it handles (found on 2-core Debian 12 VMs without Docker):
//   - kubelet ≥ 1.35 refuses cgroup v1 unless failCgroupV1 is false.
//   - Without CAP_SYS_RESOURCE every sandbox fails ("can't get final child's
//     PID from pipe"): containerd restrict_oom_score_adj and kubelet
//     oomScoreAdj 0.
//   - kubelet refuses a loopback node IP and the host name resolves to
//     127.0.0.1: the API server prefers Hostname addresses, kubelet listens
//     on 127.0.0.1.
//   - Pods are refused until the default ServiceAccount exists and cannot
//     start until kube-root-ca.crt exists: Up waits for both.
//   - Nothing can be pulled: images are local tarballs and image GC is off.
//   - kubelet deletes every socket in /var/lib/kubelet/device-plugins when
//     it starts; device plugins must re-register (ours does).
//   - kubelet changes sysctls, adds iptables chains and kubepods cgroups:
//     Down restores and removes them.
//   - There is no kube-proxy: the kubernetes Service (10.0.0.1:443) is
//     DNAT'ed to the API server so in-cluster clients work; other pod
//     traffic stays on the node.
//   - Every mount on these VMs is private, including /: Up makes /run/accel a
//     shared bind mount so the chart's Bidirectional and HostToContainer
//     propagation work.
//   - After a kubelet restart the node's Ready condition can still be the
//     old kubelet's; RestartKubelet also waits for a newer node Lease.
//   - If containerd dies, network namespace mounts stay behind: Down removes
//     them.
//   - PIDs wrap within minutes during test runs (pid_max 32768): PID files
//     record each process's start time, and every signal goes through a
//     pidfd opened before the process is checked, so a reused PID is never
//     taken for a component nor signalled.
//   - /proc/PID/cmdline is empty for a moment after exec.Cmd.Start returns
//     (the kernel closes the close-on-exec pipe Start waits for before it
//     sets up the new program's arguments): liveness never depends on a
//     command line; Up judges the components it started by their own exit
//     watchers. (Judging by the command line once made Up report a healthy
//     kubelet as exited, and a retry tear down a just-started etcd.)
//   - A failed Up stops what it started and undoes the rest, as Down does.
//   - containerd keeps shim sockets in /run/containerd/s and runc state in
//     /run/containerd/runc whatever its state setting says (1.6 always; 2.x
//     unless told): the config puts both in RunDir (shim manager socket_dir,
//     runc Root); containerd refuses a socket_dir longer than 42 bytes.
//   - kubelet 1.37 is the last to accept containerd 1.x: the cluster runs
//     containerd 2 (config version 3; 2.4 migrates it to 4 in memory and
//     warns), which also gives recursively read-only mounts and CDI.
package cluster
