package plugin

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// maxRequestIDs bounds the device IDs one container request may name: more
// than any node can advertise (256 simulated devices × MaxMonitorSlots
// monitor slots), so kubelet never reaches it, and the work and memory a
// request costs stay bounded whatever a client sends.
const maxRequestIDs = 256 * MaxMonitorSlots

// maxContainerRequests bounds the container requests of one RPC (kubelet
// sends one).
const maxContainerRequests = 1024

// The RPC handlers check every request here before using it. kubelet never
// sends a request that fails these checks; a client that does gets
// InvalidArgument naming the problem, never a panic or a silent wrong answer.
// IDs that are well-formed but unknown are not a protocol error: kubelet's
// view can lag ours by one ListAndWatch update, so Allocate answers NotFound
// and GetPreferredAllocation ranks them last.

// checkContainerCount checks the number of container requests.
func (r *Resource) checkContainerCount(rpc string, n int) error {
	switch {
	case n == 0:
		return status.Errorf(codes.InvalidArgument, "%s: %s: no container requests", r.Name, rpc)
	case n > maxContainerRequests:
		return status.Errorf(codes.InvalidArgument, "%s: %s: %d container requests; at most %d", r.Name, rpc, n, maxContainerRequests)
	}
	return nil
}

// checkIDList checks one list of IDs of a request: bounded, no empty IDs,
// no ID twice. It returns the IDs as a set.
func (r *Resource) checkIDList(where, field string, ids []string) (map[string]bool, error) {
	if len(ids) > maxRequestIDs {
		return nil, status.Errorf(codes.InvalidArgument, "%s: %s: %s lists %d device IDs; no node advertises more than %d",
			r.Name, where, field, len(ids), maxRequestIDs)
	}
	set := make(map[string]bool, len(ids))
	for i, id := range ids {
		switch {
		case id == "":
			return nil, status.Errorf(codes.InvalidArgument, "%s: %s: %s[%d] is an empty device ID", r.Name, where, field, i)
		case set[id]:
			return nil, status.Errorf(codes.InvalidArgument, "%s: %s: %s lists device ID %s twice", r.Name, where, field, quoteID(id))
		}
		set[id] = true
	}
	return set, nil
}

// checkPreferred checks one container's GetPreferredAllocation request.
func (r *Resource) checkPreferred(i int, creq *pluginapi.ContainerPreferredAllocationRequest) error {
	where := fmt.Sprintf("GetPreferredAllocation container request %d", i)
	available, err := r.checkIDList(where, "available_deviceIDs", creq.GetAvailableDeviceIDs())
	if err != nil {
		return err
	}
	must, err := r.checkIDList(where, "must_include_deviceIDs", creq.GetMustIncludeDeviceIDs())
	if err != nil {
		return err
	}
	for _, id := range creq.GetMustIncludeDeviceIDs() {
		if !available[id] {
			return status.Errorf(codes.InvalidArgument, "%s: %s: must-include device ID %s is not among the available IDs", r.Name, where, quoteID(id))
		}
	}
	size := creq.GetAllocationSize()
	switch {
	case size < 1:
		return status.Errorf(codes.InvalidArgument, "%s: %s: allocation_size %d; want at least 1", r.Name, where, size)
	case int64(size) > int64(len(available)):
		return status.Errorf(codes.InvalidArgument, "%s: %s: allocation_size %d but only %d device IDs are available", r.Name, where, size, len(available))
	case int64(size) < int64(len(must)):
		return status.Errorf(codes.InvalidArgument, "%s: %s: allocation_size %d is smaller than the %d must-include device IDs", r.Name, where, size, len(must))
	}
	return nil
}

// quoteID quotes an ID for an error message, cut short if it is long.
func quoteID(id string) string {
	const max = 80
	if len(id) > max {
		return fmt.Sprintf("%q… (%d bytes)", strings.ToValidUTF8(id[:max], "?"), len(id))
	}
	return fmt.Sprintf("%q", id)
}

// logIDs is a bounded rendering of an ID list for logs.
func logIDs(ids []string) string {
	const max = 16
	if len(ids) <= max {
		return strings.Join(ids, ",")
	}
	return fmt.Sprintf("%s,… (%d IDs)", strings.Join(ids[:max], ","), len(ids))
}
