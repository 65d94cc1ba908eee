package plugin

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// allocate answers one container's request from a snapshot.
func (r *Resource) allocate(snap *Snapshot, ids []string) (*pluginapi.ContainerAllocateResponse, error) {
	if len(ids) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "%s: empty device list", r.Name)
	}
	var devs []Device
	seen := map[string]bool{}
	for _, id := range ids {
		devID := id
		if r.kind == monitorNode {
			var ok bool
			if devID, ok = parseMonitorSlotID(id); !ok {
				return nil, status.Errorf(codes.NotFound, "%s: unknown device ID %q (monitor slot IDs look like SERIAL%s0)", r.Name, id, monitorSlotSep)
			}
		}
		d, ok := snap.Device(devID)
		switch {
		case !ok:
			return nil, status.Errorf(codes.NotFound, "%s: unknown device ID %q", r.Name, id)
		case r.kind == monitorNode && !d.HasMonitor():
			return nil, status.Errorf(codes.NotFound, "%s: device ID %q: %s has no monitor node (kernel accel device)", r.Name, id, d.Name)
		case r.kind == monitorNode && !r.validSlot(id):
			return nil, status.Errorf(codes.NotFound, "%s: unknown device ID %q (each device has %d monitor slots)", r.Name, id, r.slots)
		case !d.Healthy:
			return nil, status.Errorf(codes.FailedPrecondition, "%s: device %q (%s) is unhealthy: %s", r.Name, id, d.Name, d.Reason)
		}
		if !seen[d.ID] {
			seen[d.ID] = true
			devs = append(devs, d)
		}
	}
	slices.SortFunc(devs, func(a, b Device) int { return a.Index - b.Index })

	if r.cdi != nil {
		// The spec must name every device handed out before kubelet
		// passes the names on to the runtime.
		if err := r.cdi.sync(snap, r.Name); err != nil {
			return nil, status.Errorf(codes.Unavailable, "%s: %v", r.Name, err)
		}
	}
	return r.render(devs), nil
}

// render is the answer for devs (in index order): each device's edits for
// this resource's use, as kubelet takes them — device nodes as
// DeviceSpecs, files as Mounts, or, in CDI mode, the devices' CDI names —
// and the env variables listing the devices.
func (r *Resource) render(devs []Device) *pluginapi.ContainerAllocateResponse {
	resp := &pluginapi.ContainerAllocateResponse{Envs: map[string]string{}}
	names := map[string][]string{}
	var envs []string
	for _, d := range devs {
		e := d.edits(r.kind)
		if _, ok := names[e.Env]; !ok {
			envs = append(envs, e.Env)
		}
		names[e.Env] = append(names[e.Env], d.Name)
		if r.cdi != nil {
			resp.CdiDevices = append(resp.CdiDevices, &pluginapi.CDIDevice{Name: cdiName(r.Name, d.ID)})
			continue
		}
		for _, n := range e.Nodes() {
			resp.Devices = append(resp.Devices, &pluginapi.DeviceSpec{HostPath: n.HostPath, ContainerPath: n.ContainerPath, Permissions: n.Permissions})
		}
		for _, m := range e.Mounts() {
			resp.Mounts = append(resp.Mounts, &pluginapi.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath, ReadOnly: m.ReadOnly})
		}
	}
	for _, env := range envs {
		if env != "" { // a use without a listing variable lists nothing
			resp.Envs[env] = strings.Join(names[env], ",")
		}
	}
	return resp
}

// validSlot reports whether a monitor slot ID's number is below the slot count.
func (r *Resource) validSlot(slotID string) bool {
	devID, _ := parseMonitorSlotID(slotID)
	var k int
	if _, err := fmt.Sscanf(slotID[len(devID)+len(monitorSlotSep):], "%d", &k); err != nil {
		return false
	}
	return k >= 0 && k < r.slots && MonitorSlotID(devID, k) == slotID
}
