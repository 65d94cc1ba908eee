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

	resp := &pluginapi.ContainerAllocateResponse{Envs: map[string]string{}}
	names := make([]string, len(devs))
	for i, d := range devs {
		names[i] = d.Name
		if r.kind == computeNode {
			containerNode(d, computeNode, resp)
		}
		containerNode(d, monitorNode, resp)
	}
	env := EnvVisibleDevices
	if r.kind == monitorNode {
		env = EnvMonitorDevices
	}
	resp.Envs[env] = strings.Join(names, ",")
	return resp, nil
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
