package plugin

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// testResources is a compute and a monitor resource (2 slots per device)
// over d0..d3 (NUMA 0, 0, 1, 1), with d3 unhealthy.
func testResources(t testing.TB) (compute, monitor *Resource) {
	store := NewStore(nil)
	devs := []Device{dev("d0", 0, 0), dev("d1", 1, 0), dev("d2", 2, 1), dev("d3", 3, 1)}
	devs[3].Healthy, devs[3].Reason = false, "status malfunction"
	store.Publish("test", devs)
	return NewComputeResource("accel.io", store, testLogger(t)), NewMonitorResource("accel.io", 2, store, testLogger(t))
}

func preferred(avail, must []string, size int32) *pluginapi.PreferredAllocationRequest {
	return &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
		AvailableDeviceIDs: avail, MustIncludeDeviceIDs: must, AllocationSize: size,
	}}}
}

func manyIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("x%d", i)
	}
	return ids
}

// Item 1: a request kubelet would never send is refused with
// InvalidArgument naming the problem; it never panics (allocation_size -1
// did, in chosen[:size]) and never gets a wrong answer.
func TestGetPreferredAllocationRejectsBadRequests(t *testing.T) {
	compute, monitor := testResources(t)
	all := []string{"d0", "d1", "d2", "d3"}
	slots := []string{"d0-m0", "d0-m1", "d1-m0", "d1-m1"}
	for _, tc := range []struct {
		name string
		res  *Resource
		req  *pluginapi.PreferredAllocationRequest
		want string
	}{
		{"negative size", compute, preferred(all, nil, -1), "allocation_size -1; want at least 1"},
		{"negative size, monitor", monitor, preferred(slots, nil, -1), "allocation_size -1"},
		{"negative size with must-include", compute, preferred(all, []string{"d0"}, -5), "allocation_size -5"},
		{"zero size", compute, preferred(all, nil, 0), "allocation_size 0; want at least 1"},
		{"size above available", compute, preferred(all, nil, 5), "allocation_size 5 but only 4 device IDs are available"},
		{"huge size", monitor, preferred(slots, nil, 1<<31-1), "allocation_size 2147483647 but only 4"},
		{"duplicate available", compute, preferred([]string{"d0", "d1", "d0"}, nil, 2), `available_deviceIDs lists device ID "d0" twice`},
		{"duplicate must-include", compute, preferred(all, []string{"d1", "d1"}, 2), `must_include_deviceIDs lists device ID "d1" twice`},
		{"must-include not available", compute, preferred([]string{"d0", "d1"}, []string{"d2"}, 2), `must-include device ID "d2" is not among the available IDs`},
		{"more must-include than size", monitor, preferred(slots, []string{"d0-m0", "d1-m0"}, 1), "allocation_size 1 is smaller than the 2 must-include"},
		{"empty ID", compute, preferred([]string{"d0", ""}, nil, 1), "available_deviceIDs[1] is an empty device ID"},
		{"no container requests", compute, &pluginapi.PreferredAllocationRequest{}, "no container requests"},
		{"more IDs than any node has", monitor, preferred(manyIDs(maxRequestIDs+1), nil, 1), fmt.Sprintf("lists %d device IDs; no node advertises more than %d", maxRequestIDs+1, maxRequestIDs)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.res.GetPreferredAllocation(context.Background(), tc.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("GetPreferredAllocation = %v, %v; want InvalidArgument containing %q", resp, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.res.Name) {
				t.Errorf("error %q does not name the resource", err)
			}
		})
	}
	// Good requests still get full answers, unknown IDs included (kubelet's
	// view may lag ours by one update).
	resp, err := compute.GetPreferredAllocation(context.Background(), preferred([]string{"zz", "d2", "d0"}, []string{"zz"}, 3))
	if err != nil || strings.Join(resp.ContainerResponses[0].DeviceIDs, ",") != "zz,d0,d2" {
		t.Errorf("good request: %v, %v; want zz,d0,d2", resp, err)
	}
}

// Item 1: Allocate checks sizes and IDs before using them.
func TestAllocateRejectsBadRequests(t *testing.T) {
	compute, monitor := testResources(t)
	alloc := func(ids ...[]string) *pluginapi.AllocateRequest {
		req := &pluginapi.AllocateRequest{}
		for _, l := range ids {
			req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: l})
		}
		return req
	}
	for _, tc := range []struct {
		name string
		res  *Resource
		req  *pluginapi.AllocateRequest
		code codes.Code
		want string
	}{
		{"no container requests", compute, alloc(), codes.InvalidArgument, "Allocate: no container requests"},
		{"empty device list", compute, alloc(nil), codes.InvalidArgument, "empty device list"},
		{"ID twice", compute, alloc([]string{"d0", "d0"}), codes.InvalidArgument, `devices_ids lists device ID "d0" twice`},
		{"slot twice", monitor, alloc([]string{"d1-m1", "d1-m1"}), codes.InvalidArgument, `"d1-m1" twice`},
		{"one device for two containers", compute, alloc([]string{"d0"}, []string{"d1", "d0"}), codes.InvalidArgument, `device ID "d0" is also in container request 0`},
		{"empty ID", compute, alloc([]string{"d0", ""}), codes.InvalidArgument, "devices_ids[1] is an empty device ID"},
		{"more IDs than any node has", compute, alloc(manyIDs(maxRequestIDs + 1)), codes.InvalidArgument, "no node advertises more than"},
		{"slot number overflows", monitor, alloc([]string{"d0-m99999999999999999999"}), codes.NotFound, "each device has 2 monitor slots"},
		{"slot number out of range", monitor, alloc([]string{"d0-m2"}), codes.NotFound, "each device has 2 monitor slots"},
		{"unknown", compute, alloc([]string{"d9"}), codes.NotFound, `unknown device ID "d9"`},
		{"unhealthy", compute, alloc([]string{"d3"}), codes.FailedPrecondition, "is unhealthy: status malfunction"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.res.Allocate(context.Background(), tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Allocate = %v, %v; want %s containing %q", resp, err, tc.code, tc.want)
			}
		})
	}
	resp, err := compute.Allocate(context.Background(), alloc([]string{"d1"}, []string{"d0"}))
	if err != nil || len(resp.ContainerResponses) != 2 || resp.ContainerResponses[1].Envs[EnvVisibleDevices] != "ac0" {
		t.Errorf("two good container requests: %v, %v", resp, err)
	}
}

// Item 1, as kubelet would see it: the request that used to kill `serve`
// gets InvalidArgument over gRPC, and the server answers the next call.
func TestNegativeAllocationSizeOverGRPC(t *testing.T) {
	compute, _ := testResources(t)
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, compute)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := pluginapi.NewDevicePluginClient(conn)
	_, err = client.GetPreferredAllocation(context.Background(), preferred([]string{"d0", "d1"}, nil, -1))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "allocation_size -1") {
		t.Fatalf("allocation_size -1 over gRPC: %v; want InvalidArgument", err)
	}
	resp, err := client.GetPreferredAllocation(context.Background(), preferred([]string{"d0", "d1"}, nil, 1))
	if err != nil || len(resp.ContainerResponses[0].DeviceIDs) != 1 {
		t.Fatalf("next call: %v, %v; want one ID", resp, err)
	}
}
