package plugin

import (
	"path/filepath"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
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

// containerNode is the one place that decides how a device node reaches a
// container. Simulated nodes are FUSE files, which container runtimes refuse
// as devices, so they are bind-mounted; a kernel accel device is a
// character device and is handed over as a DeviceSpec (the runtime then
// also allows it in the container's device cgroup).
func containerNode(d Device, kind nodeKind, resp *pluginapi.ContainerAllocateResponse) {
	if d.Kernel {
		if kind == computeNode {
			resp.Devices = append(resp.Devices, &pluginapi.DeviceSpec{
				HostPath:      filepath.Join(d.HostDir, d.Name),
				ContainerPath: filepath.Join(ContainerDevDir, d.Name),
				Permissions:   "rw",
			})
		}
		return
	}
	name := d.Name
	if kind == monitorNode {
		name = accel.MonitorName(d.Index)
	}
	resp.Mounts = append(resp.Mounts, &pluginapi.Mount{
		HostPath:      filepath.Join(d.HostDir, name),
		ContainerPath: filepath.Join(ContainerDevDir, name),
		ReadOnly:      kind == monitorNode,
	})
}
