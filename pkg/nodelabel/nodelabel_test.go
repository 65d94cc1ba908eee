package nodelabel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

func device(i int, model string, kernel bool) plugin.Device {
	return plugin.Device{ID: fmt.Sprintf("SIM-%d", i), Name: accel.ComputeName(i), Index: i, Model: model,
		Status: accel.StatusOperational, Healthy: true, Simulated: !kernel}
}

// cluster is a fake API server holding one Node, that tells the test about
// every patch it applies.
type cluster struct {
	client  *fake.Clientset
	mu      sync.Mutex
	patches int
	changed chan struct{}
	failN   int // fail this many patches first
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{changed: make(chan struct{})}
	c.client = fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: "node-1", Labels: map[string]string{"kubernetes.io/hostname": "node-1", "team": "ml"},
	}})
	c.client.PrependReactor("patch", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.failN > 0 {
			c.failN--
			return true, nil, apierrors.NewServiceUnavailable("apiserver restarting")
		}
		c.patches++
		close(c.changed)
		c.changed = make(chan struct{})
		return false, nil, nil // let the tracker apply it
	})
	return c
}

// await waits until the Node's labels satisfy cond.
func (c *cluster) await(t *testing.T, what string, cond func(map[string]string) bool) map[string]string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		node, err := c.client.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cond(node.Labels) {
			return node.Labels
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: labels are %v", what, node.Labels)
		}
	}
}

func TestLabelerFollowsDevicesAndCleansUp(t *testing.T) {
	c := newCluster(t)
	c.failN = 2 // the first patches fail: retried with backoff
	store := plugin.NewStore(nil)
	store.Publish("sim", []plugin.Device{device(0, "Simulated Accel SA-1", false), device(1, "Simulated Accel SA-1", false)})
	l := &Labeler{Client: c.client, Node: "node-1", Prefix: "accel.io", Store: store, Logger: slog.New(slog.DiscardHandler)}
	if err := l.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()

	c.await(t, "two simulated devices", func(m map[string]string) bool {
		return m["accel.io/ac.present"] == "true" && m["accel.io/ac.count"] == "2" &&
			m["accel.io/ac.model"] == "Simulated_Accel_SA-1" && m["accel.io/ac.simulated"] == "true"
	})
	// Hot-plug keeps them current.
	store.Publish("sim", []plugin.Device{device(0, "Simulated Accel SA-1", false), device(1, "Simulated Accel SA-1", false), device(2, "Simulated Accel SA-1", false)})
	c.await(t, "three devices", func(m map[string]string) bool { return m["accel.io/ac.count"] == "3" })
	store.Publish("sim", nil)
	c.await(t, "no devices", func(m map[string]string) bool {
		_, model := m["accel.io/ac.model"]
		return m["accel.io/ac.present"] == "false" && m["accel.io/ac.count"] == "0" && !model
	})
	// A health change alone does not patch (labels are unchanged).
	c.mu.Lock()
	before := c.patches
	c.mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	labels := c.await(t, "labels removed", func(m map[string]string) bool { return len(m) == 2 })
	if labels["team"] != "ml" || labels["kubernetes.io/hostname"] != "node-1" {
		t.Errorf("other labels were touched: %v", labels)
	}
	c.mu.Lock()
	if c.patches != before+1 {
		t.Errorf("%d patches after shutdown, want exactly the removal", c.patches-before)
	}
	c.mu.Unlock()
}

func TestCheckGivesActionableErrors(t *testing.T) {
	c := newCluster(t)
	l := &Labeler{Client: c.client, Node: "missing", Prefix: "accel.io", Store: plugin.NewStore(nil), Logger: slog.New(slog.DiscardHandler)}
	if err := l.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "downward API") {
		t.Errorf("missing node: %v", err)
	}
	c.client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "node-1", errors.New("RBAC"))
	})
	l.Node = "node-1"
	if err := l.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "needs get and patch on nodes") {
		t.Errorf("forbidden: %v", err)
	}
}

func TestLabels(t *testing.T) {
	got := Labels("example.com", []plugin.Device{device(0, "A", true), device(1, "B", true), device(2, "B", true)})
	want := map[string]string{"example.com/ac.present": "true", "example.com/ac.count": "3", "example.com/ac.model": "B", "example.com/ac.simulated": "false"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Labels = %v, want %v", got, want)
	}
	// A mixed node: both simulated drivers, their models.
	mixed := []plugin.Device{device(0, "Simulated Accel SA-1", false), device(1, "Simulated NPU SN-1", false), device(2, "Simulated NPU SN-1", false)}
	mixed[0].Driver, mixed[1].Driver, mixed[2].Driver = "fakedev", "fakenpu", "fakenpu"
	got = Labels("accel.io", mixed)
	if got["accel.io/ac.drivers"] != "fakedev.fakenpu" || got["accel.io/ac.model"] != "Simulated_NPU_SN-1" || got["accel.io/ac.count"] != "3" {
		t.Errorf("mixed node: Labels = %v, want drivers fakedev.fakenpu, the most common model", got)
	}
	for in, want := range map[string]string{
		"Simulated Accel SA-1":  "Simulated_Accel_SA-1",
		"  (Gaudi 2) ":          "Gaudi_2",
		"pci 8086:643e":         "pci_8086_643e",
		strings.Repeat("x", 70): strings.Repeat("x", 63),
		"---":                   "",
	} {
		if got := LabelValue(in); got != want {
			t.Errorf("LabelValue(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRemoveAllTouchesOnlyOwnedLabels(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"accel.io/ac.count": "2", "accel.io/ac.present": "true", "accel.io/other": "x", "team": "ml"}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b", Labels: map[string]string{"team": "web"}}},
	)
	n, err := RemoveAll(context.Background(), cs, "accel.io", slog.New(slog.DiscardHandler))
	if err != nil || n != 1 {
		t.Fatalf("RemoveAll = %d, %v; want 1 node changed", n, err)
	}
	a, _ := cs.CoreV1().Nodes().Get(context.Background(), "a", metav1.GetOptions{})
	if fmt.Sprint(a.Labels) != "map[accel.io/other:x team:ml]" {
		t.Errorf("node a labels = %v", a.Labels)
	}
}

// The labeler waits for discovery's first report: no "present=false" flap
// at start.
func TestLabelerWaitsForDiscovery(t *testing.T) {
	c := newCluster(t)
	store := plugin.NewStore(nil)
	l := &Labeler{Client: c.client, Node: "node-1", Prefix: "accel.io", Store: store, Logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	store.Publish("sim", []plugin.Device{device(0, "M", false)})
	c.await(t, "one device", func(m map[string]string) bool { return m["accel.io/ac.count"] == "1" })
	cancel()
	<-done
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.patches != 2 { // set, then remove
		t.Errorf("%d patches, want 2 (no patch before discovery reported)", c.patches)
	}
}

// Driver names that would take ac.drivers past 63 characters are left out
// whole, never cut into a name no driver has.
func TestDriversLabelWholeNames(t *testing.T) {
	a, b, c := strings.Repeat("a", 31), strings.Repeat("b", 31), strings.Repeat("c", 31)
	if got := joinWhole([]string{a, b, c}); got != a+"."+b {
		t.Errorf("joinWhole of three 31-character names = %q, want the first two", got)
	}
	if got := joinWhole([]string{"fakedev", "fakenpu"}); got != "fakedev.fakenpu" {
		t.Errorf("joinWhole = %q", got)
	}
}
