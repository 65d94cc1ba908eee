package plugin

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// splitIDs turns a fuzzed string into an ID list: comma-separated, so
// the corpus can name real IDs (d0, d1-m0), unknown ones, empty ones and
// duplicates.
func splitIDs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzGetPreferredAllocation: whatever the request, the answer is an
// InvalidArgument, or exactly size distinct IDs, all available, every
// must-include one among them. Never a panic.
func FuzzGetPreferredAllocation(f *testing.F) {
	f.Add(false, int32(2), "d0,d1,d2,d3", "d2")
	f.Add(false, int32(-1), "d0,d1", "")
	f.Add(false, int32(0), "", "")
	f.Add(false, int32(1<<31-1), "d0", "d0")
	f.Add(false, int32(2), "d0,d0", "")
	f.Add(false, int32(1), "d0,zz", "zz")
	f.Add(true, int32(3), "d0-m0,d0-m1,d1-m0,d2-m1,d3-m0", "d0-m1")
	f.Add(true, int32(2), "d0-m0,d0-m99999999999999999999,-m0,d1-m", "")
	f.Add(true, int32(4), "d0-m0,d0-m1,d1-m0,d1-m1", "d1-m1,d0-m0")
	f.Add(true, int32(1), "d0-m0,,d1-m0", "")
	compute, monitor := testResources(f)
	f.Fuzz(func(t *testing.T, monitorRes bool, size int32, available, must string) {
		res := compute
		if monitorRes {
			res = monitor
		}
		avail, mustIDs := splitIDs(available), splitIDs(must)
		resp, err := res.GetPreferredAllocation(context.Background(), preferred(avail, mustIDs, size))
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		got := resp.ContainerResponses[0].DeviceIDs
		if len(resp.ContainerResponses) != 1 || len(got) != int(size) {
			t.Fatalf("size %d: answer %q", size, got)
		}
		seen := map[string]bool{}
		for _, id := range got {
			if seen[id] || !slices.Contains(avail, id) {
				t.Fatalf("answer %q: %q repeated or not available (%q)", got, id, avail)
			}
			seen[id] = true
		}
		for _, id := range mustIDs {
			if !seen[id] {
				t.Fatalf("answer %q lacks must-include %q", got, id)
			}
		}
	})
}

// FuzzAllocate: whatever the request, the answer is InvalidArgument,
// NotFound or FailedPrecondition, or one response per container naming
// exactly the devices asked for, each healthy. Never a panic.
func FuzzAllocate(f *testing.F) {
	f.Add(false, "d0,d1", "")
	f.Add(false, "d3", "")
	f.Add(false, "d0", "d0")
	f.Add(false, "", "")
	f.Add(false, "d0,,d1", "d2")
	f.Add(true, "d0-m0,d0-m1,d1-m0", "d2-m0")
	f.Add(true, "d0-m2,d0-m01,d0-m-1", "")
	f.Add(true, "d0-m99999999999999999999", "")
	f.Add(true, "d0,d0-m0", "")
	compute, monitor := testResources(f)
	snap, _ := compute.store.Load()
	f.Fuzz(func(t *testing.T, monitorRes bool, first, second string) {
		res := compute
		if monitorRes {
			res = monitor
		}
		lists := [][]string{splitIDs(first)}
		if second != "" {
			lists = append(lists, splitIDs(second))
		}
		req := &pluginapi.AllocateRequest{}
		for _, l := range lists {
			req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: l})
		}
		resp, err := res.Allocate(context.Background(), req)
		if err != nil {
			switch status.Code(err) {
			case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
				return
			}
			t.Fatalf("error %v has an unexpected code", err)
		}
		if len(resp.ContainerResponses) != len(lists) {
			t.Fatalf("%d responses for %d container requests", len(resp.ContainerResponses), len(lists))
		}
		env := EnvVisibleDevices
		if monitorRes {
			env = EnvMonitorDevices
		}
		for i, l := range lists {
			var names []string
			for _, id := range l {
				devID := id
				if monitorRes {
					devID, _ = parseMonitorSlotID(id)
				}
				d, ok := snap.Device(devID)
				if !ok || !d.Healthy {
					t.Fatalf("allocated %q: unknown or unhealthy device", id)
				}
				if !slices.Contains(names, d.Name) {
					names = append(names, d.Name)
				}
			}
			slices.Sort(names)
			c := resp.ContainerResponses[i]
			if got := c.Envs[env]; got != strings.Join(names, ",") {
				t.Fatalf("container %d got %s=%q, want %q", i, env, got, strings.Join(names, ","))
			}
			perDevice := 2
			if monitorRes {
				perDevice = 1
			}
			if len(c.Mounts) != perDevice*len(names) {
				t.Fatalf("container %d: %d mounts for %d devices", i, len(c.Mounts), len(names))
			}
		}
	})
}
