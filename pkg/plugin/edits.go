package plugin

import (
	"path/filepath"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// ContainerDevDir is where a container finds the nodes it was given.
const ContainerDevDir = "/dev/accel"

// Environment variables a container receives, listing device names
// (e.g. "ac0,ac2") in index order.
const (
	EnvVisibleDevices = "ACCEL_VISIBLE_DEVICES" // devices whose compute and monitor nodes it got
	EnvMonitorDevices = "ACCEL_MONITOR_DEVICES" // devices whose monitor node it got
)

// nodeKind says whether a container gets a device's compute or monitor node.
type nodeKind int

const (
	computeNode nodeKind = iota
	monitorNode
)

// maxEdits bounds the device nodes, and the mounts, of one use of a device
// (a compute node and its monitor; a kernel accel node and its driver's
// control node).
const maxEdits = 2

// DeviceNode is a character device a container is given.
type DeviceNode struct {
	HostPath      string // as the container runtime sees it
	ContainerPath string
	Permissions   string // cgroup device permissions, "rw"
}

// Mount is a file bind-mounted into a container.
type Mount struct {
	HostPath      string // as the container runtime sees it
	ContainerPath string
	ReadOnly      bool
}

// Edits is what a container is given for one use of a device: exclusive
// (compute) or shared (monitor). The arrays keep a Device comparable with
// ==; the zero entries after the used ones do not count (see Nodes and
// Mounts).
type Edits struct {
	DeviceNodes [maxEdits]DeviceNode
	BindMounts  [maxEdits]Mount
	// Env names the variable that lists the device: a container given
	// several devices gets their names joined by "," in index order.
	Env string
}

// Nodes returns the device nodes in use.
func (e Edits) Nodes() []DeviceNode {
	n := 0
	for n < maxEdits && e.DeviceNodes[n] != (DeviceNode{}) {
		n++
	}
	return e.DeviceNodes[:n:n]
}

// Mounts returns the bind mounts in use.
func (e Edits) Mounts() []Mount {
	n := 0
	for n < maxEdits && e.BindMounts[n] != (Mount{}) {
		n++
	}
	return e.BindMounts[:n:n]
}

// Empty reports whether the use gives a container nothing: the device
// does not offer it.
func (e Edits) Empty() bool { return e == Edits{} }

// simEdits are a simulated device's edits. Its nodes are FUSE regular
// files, which container runtimes refuse as device nodes, so both are
// bind-mounted: a compute user gets the compute node and the monitor node,
// a monitor user the monitor node, read-only.
func simEdits(hostDir string, index int) (compute, monitor Edits) {
	mount := func(name string, ro bool) Mount {
		return Mount{HostPath: filepath.Join(hostDir, name), ContainerPath: filepath.Join(ContainerDevDir, name), ReadOnly: ro}
	}
	c, m := accel.ComputeName(index), accel.MonitorName(index)
	compute = Edits{BindMounts: [maxEdits]Mount{mount(c, false), mount(m, true)}, Env: EnvVisibleDevices}
	monitor = Edits{BindMounts: [maxEdits]Mount{mount(m, true)}, Env: EnvMonitorDevices}
	return compute, monitor
}

// kernelEdits are a kernel accel device's edits: its character device,
// handed over as a device node (the runtime then also allows it in the
// container's device cgroup), and its driver's control node where it has
// one (habanalabs' accel_controlDN), which is then also the device's
// monitor node: shared, it answers only the info query.
func kernelEdits(hostDir, name, control string) (compute, monitor Edits) {
	node := func(n string) DeviceNode {
		return DeviceNode{HostPath: filepath.Join(hostDir, n), ContainerPath: filepath.Join(ContainerDevDir, n), Permissions: "rw"}
	}
	compute = Edits{DeviceNodes: [maxEdits]DeviceNode{node(name)}, Env: EnvVisibleDevices}
	if control == "" {
		return compute, Edits{}
	}
	compute.DeviceNodes[1] = node(control)
	return compute, Edits{DeviceNodes: [maxEdits]DeviceNode{node(control)}, Env: EnvMonitorDevices}
}
