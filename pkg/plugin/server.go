package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Resource is one extended resource and its device-plugin gRPC service.
// It only reads snapshots from the Store; every ListAndWatch stream keeps
// its own "last sent" state, so streams never touch each other.
type Resource struct {
	pluginapi.UnimplementedDevicePluginServer

	// Name is the extended resource name, e.g. "accel.io/ac".
	Name  string
	kind  nodeKind
	slots int // monitor slots per device (monitor resource only)
	store *Store
	log   *slog.Logger

	metrics    *Metrics    // nil: none
	cdi        *cdiSpecs   // CDI mode: Allocate names CDI devices of these specs; nil: off
	registered atomic.Bool // registered with the current kubelet
}

// NewComputeResource is "<prefix>/ac": one unit is one whole device.
func NewComputeResource(prefix string, store *Store, log *slog.Logger) *Resource {
	return newResource(prefix+"/ac", computeNode, 0, store, log)
}

// NewMonitorResource is "<prefix>/ac-monitor": slots units per device.
func NewMonitorResource(prefix string, slots int, store *Store, log *slog.Logger) *Resource {
	return newResource(prefix+"/ac-monitor", monitorNode, slots, store, log)
}

func newResource(name string, kind nodeKind, slots int, store *Store, log *slog.Logger) *Resource {
	return &Resource{
		Name: name, kind: kind, slots: slots, store: store,
		log: log.With("resource", name),
	}
}

// SocketName is the file name of the resource's socket in kubelet's
// device-plugin directory, e.g. "accel.io-ac.sock".
func (r *Resource) SocketName() string {
	return strings.ReplaceAll(r.Name, "/", "-") + ".sock"
}

// Options is what the resource tells kubelet it supports.
func (r *Resource) options() *pluginapi.DevicePluginOptions {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}
}

// GetDevicePluginOptions advertises GetPreferredAllocation.
func (r *Resource) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return r.options(), nil
}

// unit is one advertised device as a comparable value; lists of units are
// diffed before anything is converted to protobuf.
type unit struct {
	ID      string
	Healthy bool
	NUMA    int
}

// units lists what the resource advertises in a snapshot.
func (r *Resource) units(snap *Snapshot) []unit {
	var out []unit
	for _, d := range snap.Devices {
		if r.kind == computeNode {
			out = append(out, unit{d.ID, d.Healthy, d.NUMANode})
			continue
		}
		if !d.HasMonitor() {
			continue
		}
		for k := range r.slots {
			out = append(out, unit{MonitorSlotID(d.ID, k), d.Healthy, d.NUMANode})
		}
	}
	return out
}

func toAPI(units []unit) *pluginapi.ListAndWatchResponse {
	resp := &pluginapi.ListAndWatchResponse{Devices: make([]*pluginapi.Device, len(units))}
	for i, u := range units {
		dev := &pluginapi.Device{ID: u.ID, Health: pluginapi.Unhealthy}
		if u.Healthy {
			dev.Health = pluginapi.Healthy
		}
		if u.NUMA >= 0 {
			dev.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(u.NUMA)}}}
		}
		resp.Devices[i] = dev
	}
	return resp
}

// ListAndWatch sends the full list at once, then the list again whenever
// what this resource advertises changes. A stream that wakes late sends only
// the newest list: changes coalesce, and none is lost.
func (r *Resource) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	ctx := stream.Context()
	var last []unit
	first := true
	for {
		snap, changed := r.store.Load()
		cur := r.units(snap)
		if first || !slices.Equal(cur, last) {
			if err := stream.Send(toAPI(cur)); err != nil {
				r.log.Info("ListAndWatch stream closed", "err", err)
				return err
			}
			r.metrics.sent(r.Name)
			r.log.Debug("sent device list", "version", snap.Version, "units", len(cur), "healthy", countHealthy(cur))
			last, first = cur, false
		}
		select {
		case <-ctx.Done():
			r.log.Info("ListAndWatch stream ended by kubelet")
			return nil
		case <-changed:
		}
	}
}

func countHealthy(units []unit) int {
	n := 0
	for _, u := range units {
		if u.Healthy {
			n++
		}
	}
	return n
}

// Allocate gives each container the nodes of the devices kubelet chose. A
// malformed request fails with InvalidArgument, an unknown ID with
// NotFound, an unhealthy device with FailedPrecondition; each error names
// the ID and the problem, and fails the whole request.
func (r *Resource) Allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	snap, _ := r.store.Load()
	creqs := req.GetContainerRequests()
	if err := r.checkContainerCount("Allocate", len(creqs)); err != nil {
		r.metrics.allocated(r.Name, err)
		r.log.Warn("allocate refused", "err", err)
		return nil, err
	}
	resp := &pluginapi.AllocateResponse{}
	owner := map[string]int{} // ID → the container request that named it
	for i, creq := range creqs {
		ids := creq.GetDevicesIds()
		cresp, err := r.allocateOne(snap, i, ids, owner)
		r.metrics.allocated(r.Name, err)
		if err != nil {
			r.log.Warn("allocate refused", "ids", logIDs(ids), "err", err)
			return nil, err
		}
		// One line per call would be most of the log (kubelet calls for
		// every container): per-call lines are debug, the count is in
		// accel_plugin_allocations_total.
		if r.log.Enabled(ctx, slog.LevelDebug) {
			r.log.Debug("allocated", "ids", logIDs(ids), "env", cresp.Envs)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, cresp)
	}
	return resp, nil
}

// allocateOne checks and answers container request i.
func (r *Resource) allocateOne(snap *Snapshot, i int, ids []string, owner map[string]int) (*pluginapi.ContainerAllocateResponse, error) {
	where := fmt.Sprintf("Allocate container request %d", i)
	if _, err := r.checkIDList(where, "devices_ids", ids); err != nil {
		return nil, err
	}
	for _, id := range ids {
		if j, taken := owner[id]; taken {
			return nil, status.Errorf(codes.InvalidArgument, "%s: %s: device ID %s is also in container request %d; a unit goes to one container",
				r.Name, where, quoteID(id), j)
		}
		owner[id] = i
	}
	return r.allocate(snap, ids)
}

// GetPreferredAllocation keeps compute requests on few NUMA nodes and
// spreads monitor slots over distinct devices. A malformed request (a
// size below 1 or above the available IDs, duplicate IDs, must-include IDs
// that are not available) fails with InvalidArgument naming the problem.
// The answer always has exactly allocation_size distinct IDs, all
// available, every must-include ID among them.
func (r *Resource) GetPreferredAllocation(ctx context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	snap, _ := r.store.Load()
	creqs := req.GetContainerRequests()
	if err := r.checkContainerCount("GetPreferredAllocation", len(creqs)); err != nil {
		r.log.Warn("preferred allocation refused", "err", err)
		return nil, err
	}
	resp := &pluginapi.PreferredAllocationResponse{}
	for i, creq := range creqs {
		if err := r.checkPreferred(i, creq); err != nil {
			r.log.Warn("preferred allocation refused", "err", err)
			return nil, err
		}
		size := int(creq.GetAllocationSize())
		var ids []string
		if r.kind == computeNode {
			ids = preferCompute(snap, creq.GetAvailableDeviceIDs(), creq.GetMustIncludeDeviceIDs(), size)
		} else {
			ids = preferMonitor(snap, creq.GetAvailableDeviceIDs(), creq.GetMustIncludeDeviceIDs(), size)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// PreStartContainer is not required (see options), so kubelet never calls
// it; it uses nothing of its request and answers every call with success.
func (r *Resource) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
