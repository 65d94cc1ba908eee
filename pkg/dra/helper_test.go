package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	drahealthv1 "k8s.io/kubelet/pkg/apis/dra-health/v1"
	drapbv1 "k8s.io/kubelet/pkg/apis/dra/v1"
	"k8s.io/utils/ptr"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// TestHelperServesKubelet runs the driver on the real kubeletplugin helper
// against a fake API server, and talks to its sockets as kubelet does:
// slices published and their taint following health both ways, a claim
// prepared and unprepared over gRPC, and health streamed.
func TestHelperServesKubelet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid"}})
	asAPIServer(client)
	c := claim("claim-uid-1", "c1", alloc{request: "acc", device: "ac1"})
	if _, err := client.ResourceV1().ResourceClaims("ns").Create(ctx, c, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The fake API server does not keep status on create: set it.
	if _, err := client.ResourceV1().ResourceClaims("ns").UpdateStatus(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d, store := newTestDriver(t, simDevice(0, "SIM-A"), simDevice(1, "SIM-B"))
	d.cfg.Client = client
	slicesW, err := client.ResourceV1().ResourceSlices().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer slicesW.Stop()

	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, store) }()
	stopped := false
	defer func() {
		cancel()
		if !stopped {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}()

	// awaitSlice waits for a slice event whose devices satisfy ok.
	awaitSlice := func(what string, ok func(map[string]resourceapi.Device) bool) {
		t.Helper()
		for {
			select {
			case ev, open := <-slicesW.ResultChan():
				if !open {
					t.Fatalf("slice watch ended waiting for %s", what)
				}
				s, isSlice := ev.Object.(*resourceapi.ResourceSlice)
				if !isSlice || ev.Type == watch.Deleted {
					continue
				}
				if s.Spec.Driver != testDomain || s.Spec.Pool.Name != testNode || s.Spec.NodeName == nil || *s.Spec.NodeName != testNode {
					t.Fatalf("slice driver %q pool %q node %v", s.Spec.Driver, s.Spec.Pool.Name, s.Spec.NodeName)
				}
				devs := map[string]resourceapi.Device{}
				for _, dev := range s.Spec.Devices {
					devs[dev.Name] = dev
				}
				if ok(devs) {
					return
				}
			case err := <-done:
				stopped = true
				t.Fatalf("Run ended (%v) waiting for a ResourceSlice with %s", err, what)
			case <-ctx.Done():
				t.Fatalf("no ResourceSlice with %s", what)
			}
		}
	}
	awaitSlice("4 untainted devices", func(devs map[string]resourceapi.Device) bool {
		return len(devs) == 4 && len(devs["ac0"].Taints) == 0
	})

	conn, err := grpc.NewClient("unix://"+filepath.Join(d.cfg.PluginDataDir, "dra.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dra := drapbv1.NewDRAPluginClient(conn)
	resp, err := dra.NodePrepareResources(ctx, &drapbv1.NodePrepareResourcesRequest{
		Claims: []*drapbv1.Claim{{Namespace: "ns", Name: "c1", Uid: "claim-uid-1"}},
	}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Claims["claim-uid-1"]
	if got == nil || got.Error != "" || len(got.Devices) != 1 || !slices.Equal(got.Devices[0].CdiDeviceIds, []string{"accel.io/claim=claim-uid-1-acc"}) {
		t.Fatalf("prepare response %v", got)
	}
	if !specExists(d, "claim-uid-1") {
		t.Error("no CDI spec for the prepared claim")
	}

	health, err := drahealthv1.NewDRAResourceHealthClient(conn).NodeWatchResources(ctx, &drahealthv1.NodeWatchResourcesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	awaitHealth := func(device string, want drahealthv1.HealthStatus, msg string) {
		t.Helper()
		for {
			r, err := health.Recv()
			if err != nil {
				t.Fatalf("health stream waiting for %s %v: %v", device, want, err)
			}
			for _, h := range r.Devices {
				if h.Device.PoolName == testNode && h.Device.DeviceName == device && h.Health == want && h.Message == msg {
					return
				}
			}
		}
	}
	awaitHealth("ac1", drahealthv1.HealthStatus_HEALTHY, "")

	// A fault on the held device: tainted, and Unhealthy with the reason.
	store.Publish("sim:"+hostDir, []plugin.Device{simDevice(0, "SIM-A"), unhealthy(simDevice(1, "SIM-B"), accel.StatusMalfunction, "status Malfunction")})
	awaitSlice("ac1 tainted", func(devs map[string]resourceapi.Device) bool {
		tt := devs["ac1"].Taints
		return len(tt) == 1 && tt[0].Value == TaintMalfunction && tt[0].Effect == resourceapi.DeviceTaintEffectNoSchedule
	})
	awaitHealth("ac1", drahealthv1.HealthStatus_UNHEALTHY, "status Malfunction")
	// Reset: the taint goes, healthy again.
	store.Publish("sim:"+hostDir, []plugin.Device{simDevice(0, "SIM-A"), simDevice(1, "SIM-B")})
	awaitSlice("ac1 untainted", func(devs map[string]resourceapi.Device) bool {
		return len(devs) == 4 && len(devs["ac1"].Taints) == 0
	})
	awaitHealth("ac1", drahealthv1.HealthStatus_HEALTHY, "")

	// Unplugged while held: published with NoExecute until unprepared.
	store.Publish("sim:"+hostDir, []plugin.Device{simDevice(0, "SIM-A")})
	awaitSlice("gone ac1 NoExecute", func(devs map[string]resourceapi.Device) bool {
		tt := devs["ac1"].Taints
		return len(tt) == 1 && tt[0].Effect == resourceapi.DeviceTaintEffectNoExecute && tt[0].Value == TaintRemoved
	})
	un, err := dra.NodeUnprepareResources(ctx, &drapbv1.NodeUnprepareResourcesRequest{
		Claims: []*drapbv1.Claim{{Namespace: "ns", Name: "c1", Uid: "claim-uid-1"}},
	})
	if err != nil || un.Claims["claim-uid-1"] == nil || un.Claims["claim-uid-1"].Error != "" {
		t.Fatalf("unprepare: %v %v", un, err)
	}
	awaitSlice("ac1 gone from the slice", func(devs map[string]resourceapi.Device) bool {
		_, held := devs["ac1"]
		return len(devs) == 2 && !held
	})
	if specExists(d, "claim-uid-1") {
		t.Error("the unprepared claim's CDI spec is still there")
	}

	// Uninstall: this node's slices, the specs and the checkpoint go;
	// another node's slice stays.
	if res := prepare(t, d, claim("u2", "c-u2", alloc{request: "r", device: "ac0"}))["u2"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	other := &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "other-node-slice"},
		Spec:       resourceapi.ResourceSliceSpec{Driver: testDomain, NodeName: ptr.To("node-2"), Pool: resourceapi.ResourcePool{Name: "node-2", ResourceSliceCount: 1}},
	}
	if _, err := client.ResourceV1().ResourceSlices().Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	stopped = true
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := d.Uninstall(context.Background()); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	left, err := client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(left.Items) != 1 || left.Items[0].Name != "other-node-slice" {
		t.Errorf("slices after uninstall: %d (want only another node's)", len(left.Items))
	}
	if specExists(d, "u2") {
		t.Error("a claim spec survived the uninstall")
	}
	if _, err := os.Stat(d.ckpt); !os.IsNotExist(err) {
		t.Errorf("checkpoint after uninstall: %v", err)
	}

	// The chart's post-delete hook: every node's slices of this driver go,
	// another driver's stay.
	foreign := other.DeepCopy()
	foreign.Name, foreign.Spec.Driver = "gpu-slice", "gpu.example.com"
	if _, err := client.ResourceV1().ResourceSlices().Create(context.Background(), foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, err := RemoveAllSlices(context.Background(), client, testDomain); err != nil || n != 1 {
		t.Errorf("RemoveAllSlices = %d, %v; want 1 (another node's slice), nil", n, err)
	}
	if left, err = client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{}); err != nil || len(left.Items) != 1 || left.Items[0].Name != "gpu-slice" {
		t.Errorf("slices after RemoveAllSlices: %v %v (want only another driver's)", left, err)
	}
	if why := d.NotReady(); why != "the DRA driver is not running" {
		t.Errorf("NotReady after Run = %q", why)
	}
}

// asAPIServer makes the fake API server name created objects from their
// generateName and give every created or updated object a new resource
// version, as a real one does. The slice controller creates slices with a
// generateName (without this every slice would be named ""), and its
// mutation cache orders what it wrote and what its informer saw by
// resource version (without it a stale informer copy can win, and a
// change waits for the controller's 30 s resync).
func asAPIServer(client *fake.Clientset) {
	var names, versions atomic.Int64
	for _, verb := range []string{"create", "update"} {
		client.PrependReactor(verb, "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
			w, ok := a.(interface{ GetObject() runtime.Object }) // create and update actions
			if !ok {
				return false, nil, nil
			}
			if m, ok := w.GetObject().(metav1.Object); ok {
				if m.GetName() == "" && m.GetGenerateName() != "" {
					m.SetName(fmt.Sprintf("%s%05d", m.GetGenerateName(), names.Add(1)))
				}
				m.SetResourceVersion(fmt.Sprint(versions.Add(1)))
			}
			return false, nil, nil // on to the object tracker
		})
	}
}
