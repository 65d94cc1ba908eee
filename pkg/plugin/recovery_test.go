package plugin

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// panicky is a device-plugin service with bugs: GetPreferredAllocation
// slices out of range (as 12137fa did for allocation_size -1), and every
// ListAndWatch after the first panics after sending one list.
type panicky struct {
	pluginapi.UnimplementedDevicePluginServer
	streams atomic.Int32
	send    chan struct{} // each receive sends one more list on stream 1
}

func (p *panicky) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	ids := []string{"a", "b"}
	n := int(req.ContainerRequests[0].AllocationSize)
	return &pluginapi.PreferredAllocationResponse{ContainerResponses: []*pluginapi.ContainerPreferredAllocationResponse{{DeviceIDs: ids[:n]}}}, nil
}

func (p *panicky) Allocate(context.Context, *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	return &pluginapi.AllocateResponse{}, nil
}

func (p *panicky) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	n := p.streams.Add(1)
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: []*pluginapi.Device{{ID: "a", Health: pluginapi.Healthy}}}); err != nil {
		return err
	}
	if n > 1 {
		var m map[string]int
		m["boom"]++ //nolint:staticcheck // SA5000: the nil map write is the point, a runtime (not an explicit) panic
	}
	for {
		select {
		case <-s.Context().Done():
			return nil
		case <-p.send:
			if err := s.Send(&pluginapi.ListAndWatchResponse{}); err != nil {
				return err
			}
		}
	}
}

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A handler panic becomes codes.Internal for that call, is logged with the
// method and the stack, and neither kills the process nor disturbs other
// calls: an open stream keeps working and the next call succeeds.
func TestRecoverHandlerPanics(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	svc := &panicky{send: make(chan struct{})}
	srv := newServer(log, nil)
	pluginapi.RegisterDevicePluginServer(srv, svc)
	path := filepath.Join(shortTempDir(t), "p.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := pluginapi.NewDevicePluginClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Stream 1 is healthy and stays open throughout.
	s1, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Recv(); err != nil {
		t.Fatal(err)
	}

	// A unary handler panics.
	_, err = client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AllocationSize: -1}},
	})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "GetPreferredAllocation") {
		t.Fatalf("panicking GetPreferredAllocation = %v, want Internal naming the method", err)
	}

	// A stream handler panics: that stream ends with Internal.
	s2, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Recv(); err != nil {
		t.Fatalf("stream 2's first list: %v", err)
	}
	if _, err := s2.Recv(); status.Code(err) != codes.Internal {
		t.Fatalf("panicking ListAndWatch ended with %v, want Internal", err)
	}

	// Everything else goes on: stream 1 still delivers, calls succeed.
	svc.send <- struct{}{}
	if _, err := s1.Recv(); err != nil {
		t.Fatalf("stream 1 after the panics: %v", err)
	}
	if _, err := client.Allocate(ctx, &pluginapi.AllocateRequest{}); err != nil {
		t.Fatalf("Allocate after the panics: %v", err)
	}
	_, err = client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{AllocationSize: 1}},
	})
	if err != nil {
		t.Fatalf("GetPreferredAllocation after its panic: %v", err)
	}

	out := logs.String()
	for _, want := range []string{
		"method=/v1beta1.DevicePlugin/GetPreferredAllocation",
		"method=/v1beta1.DevicePlugin/ListAndWatch",
		"slice bounds out of range",
		"assignment to entry in nil map",
		"recovery_test.go", // the stack names the panicking handler
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "level=ERROR"); n != 2 {
		t.Errorf("%d error lines for 2 panics:\n%s", n, out)
	}
}
