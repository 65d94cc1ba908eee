package plugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const settle = 10 * time.Second // generous bound for start-up under -race

func TestRegistersBothResourcesAndListsDevices(t *testing.T) {
	h := startHarness(t, 4, 2, 8)
	compute := h.kubelet.awaitList(settle, computeRes, 4, 4)
	monitor := h.kubelet.awaitList(settle, monitorRes, 32, 32)

	numa := map[string]int64{}
	for _, d := range compute.devices {
		if !strings.HasPrefix(d.ID, "MEM-") {
			t.Errorf("compute ID %q is not the device serial", d.ID)
		}
		if d.Topology == nil || len(d.Topology.Nodes) != 1 {
			t.Fatalf("device %s has no NUMA topology: %v", d.ID, d.Topology)
		}
		numa[d.ID] = d.Topology.Nodes[0].ID
	}
	if got := fmt.Sprint(slices.Sorted(mapValues(numa))); got != "[0 0 1 1]" {
		t.Errorf("NUMA nodes = %s, want two devices on each of 0 and 1", got)
	}
	perDevice := map[string]int{}
	for _, d := range monitor.devices {
		dev, ok := parseMonitorSlotID(d.ID)
		if !ok {
			t.Fatalf("monitor ID %q is not SERIAL-mK", d.ID)
		}
		if _, known := numa[dev]; !known {
			t.Fatalf("monitor slot %q names unknown device %q", d.ID, dev)
		}
		perDevice[dev]++
	}
	for dev, n := range perDevice {
		if n != 8 {
			t.Errorf("device %s has %d monitor slots, want 8", dev, n)
		}
	}
}

func mapValues[K comparable, V any](m map[K]V) func(func(V) bool) {
	return func(yield func(V) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

func TestMonitorSlotsZeroDisablesResource(t *testing.T) {
	h := startHarness(t, 2, 1, 0)
	h.kubelet.awaitList(settle, computeRes, 2, 2)
	if len(h.plugin.Resources) != 1 {
		t.Fatalf("resources = %d, want only %s", len(h.plugin.Resources), computeRes)
	}
	if c := h.kubelet.client(monitorRes); c != nil {
		t.Fatalf("%s registered with --monitor-slots 0", monitorRes)
	}
}

func TestAllocate(t *testing.T) {
	h := startHarness(t, 3, 1, 4)
	compute := h.kubelet.awaitList(settle, computeRes, 3, 3)
	h.kubelet.awaitList(settle, monitorRes, 12, 12)
	ids := []string{compute.devices[2].ID, compute.devices[0].ID}
	ctx := context.Background()

	resp, err := h.kubelet.client(computeRes).Allocate(ctx, &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}},
	})
	if err != nil {
		t.Fatalf("Allocate compute: %v", err)
	}
	c := resp.ContainerResponses[0]
	if got := c.Envs[EnvVisibleDevices]; got != "ac0,ac2" {
		t.Errorf("%s = %q, want ac0,ac2", EnvVisibleDevices, got)
	}
	wantMounts := []string{
		"/host/run/accel/dev/ac0 -> /dev/accel/ac0 rw",
		"/host/run/accel/dev/ac0_monitor -> /dev/accel/ac0_monitor ro",
		"/host/run/accel/dev/ac2 -> /dev/accel/ac2 rw",
		"/host/run/accel/dev/ac2_monitor -> /dev/accel/ac2_monitor ro",
	}
	if got := mounts(c); !slices.Equal(got, wantMounts) {
		t.Errorf("compute mounts:\n got %q\nwant %q", got, wantMounts)
	}
	if len(c.Devices) != 0 {
		t.Errorf("simulated nodes must be mounts, not DeviceSpecs: %v", c.Devices)
	}

	// Two slots of the same device and one of another: each monitor once.
	slots := []string{MonitorSlotID(compute.devices[1].ID, 0), MonitorSlotID(compute.devices[1].ID, 3), MonitorSlotID(compute.devices[0].ID, 1)}
	resp, err = h.kubelet.client(monitorRes).Allocate(ctx, &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: slots}},
	})
	if err != nil {
		t.Fatalf("Allocate monitor: %v", err)
	}
	c = resp.ContainerResponses[0]
	if got := c.Envs[EnvMonitorDevices]; got != "ac0,ac1" {
		t.Errorf("%s = %q, want ac0,ac1", EnvMonitorDevices, got)
	}
	wantMounts = []string{
		"/host/run/accel/dev/ac0_monitor -> /dev/accel/ac0_monitor ro",
		"/host/run/accel/dev/ac1_monitor -> /dev/accel/ac1_monitor ro",
	}
	if got := mounts(c); !slices.Equal(got, wantMounts) {
		t.Errorf("monitor mounts:\n got %q\nwant %q", got, wantMounts)
	}
	if _, ok := c.Envs[EnvVisibleDevices]; ok {
		t.Errorf("a monitor allocation must not set %s", EnvVisibleDevices)
	}
}

func mounts(c *pluginapi.ContainerAllocateResponse) []string {
	var out []string
	for _, m := range c.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		out = append(out, fmt.Sprintf("%s -> %s %s", m.HostPath, m.ContainerPath, mode))
	}
	slices.Sort(out)
	return out
}

func TestAllocateRejectsUnknownAndUnhealthy(t *testing.T) {
	h := startHarness(t, 2, 1, 2)
	compute := h.kubelet.awaitList(settle, computeRes, 2, 2)
	h.kubelet.awaitList(settle, monitorRes, 4, 4)
	good := compute.devices[0].ID
	ctx := context.Background()
	alloc := func(res string, ids ...string) error {
		_, err := h.kubelet.client(res).Allocate(ctx, &pluginapi.AllocateRequest{
			ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}},
		})
		return err
	}
	for _, tc := range []struct {
		res  string
		ids  []string
		code codes.Code
		want string
	}{
		{computeRes, []string{good, "SIM-000000000000"}, codes.NotFound, `unknown device ID "SIM-000000000000"`},
		{computeRes, []string{MonitorSlotID(good, 0)}, codes.NotFound, "unknown device ID"},
		{computeRes, nil, codes.InvalidArgument, "empty device list"},
		{monitorRes, []string{good}, codes.NotFound, "monitor slot IDs look like"},
		{monitorRes, []string{MonitorSlotID(good, 2)}, codes.NotFound, "each device has 2 monitor slots"},
		{monitorRes, []string{good + "-m01"}, codes.NotFound, "unknown device ID"},
		{monitorRes, []string{"SIM-000000000000-m0"}, codes.NotFound, `"SIM-000000000000-m0"`},
	} {
		err := alloc(tc.res, tc.ids...)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Allocate %s %q = %v; want %s containing %q", tc.res, tc.ids, err, tc.code, tc.want)
		}
	}

	h.ctl(t, "fault ac0 malfunction")
	h.kubelet.awaitList(time.Second, computeRes, 2, 1)
	err := alloc(computeRes, good)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), good) ||
		!strings.Contains(err.Error(), "malfunction") {
		t.Errorf("Allocate of a faulty device = %v; want FailedPrecondition naming %s and its status", err, good)
	}
	if err := alloc(monitorRes, MonitorSlotID(good, 0)); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("monitor Allocate of a faulty device = %v; want FailedPrecondition", err)
	}
}

// Every change made through the simulator reaches ListAndWatch in ≤ 50 ms.
func TestChangesReachListAndWatchFast(t *testing.T) {
	h := startHarness(t, 2, 1, 2)
	h.kubelet.awaitList(settle, computeRes, 2, 2)
	h.kubelet.awaitList(settle, monitorRes, 4, 4)
	const bound = 50 * time.Millisecond
	for _, step := range []struct {
		cmd              string
		total, healthy   int
		mtotal, mhealthy int
	}{
		{"add", 3, 3, 6, 6},
		{"fault ac1 malfunction", 3, 2, 6, 4},
		{"recover ac1", 3, 3, 6, 6},
		{"fault ac0 needs-reset", 3, 2, 6, 4},
		{"reset ac0", 3, 3, 6, 6},
		{"remove ac2", 2, 2, 4, 4},
		{"add 2", 4, 4, 8, 8},
	} {
		start := time.Now()
		h.ctl(t, step.cmd)
		h.kubelet.awaitList(2*time.Second, computeRes, step.total, step.healthy)
		at := h.kubelet.awaitList(2*time.Second, monitorRes, step.mtotal, step.mhealthy).at
		if lat := at.Sub(start); lat > bound {
			t.Errorf("%q reached ListAndWatch after %s; want ≤ %s", step.cmd, lat, bound)
		} else {
			t.Logf("%-24q → ListAndWatch in %s", step.cmd, lat)
		}
	}
}

// A device ID belongs to one device for good: a hot-plugged device gets a
// new ID even when it takes a removed device's index, and IDs are the same
// after a plugin restart.
func TestDeviceIDsStableAndNeverReused(t *testing.T) {
	h := startHarness(t, 3, 1, 1)
	before := ids(h.kubelet.awaitList(settle, computeRes, 3, 3))
	h.ctl(t, "remove ac1")
	h.kubelet.awaitList(2*time.Second, computeRes, 2, 2)
	h.ctl(t, "add")
	after := ids(h.kubelet.awaitList(2*time.Second, computeRes, 3, 3))
	if slices.Equal(before, after) {
		t.Fatalf("IDs unchanged after unplug + plug: %v", after)
	}
	for _, id := range after {
		if id != before[0] && id != before[2] && slices.Contains(before, id) {
			t.Errorf("ID %s of the removed device came back for a new one", id)
		}
	}

	// Restart the plugin against the same daemon: same IDs.
	h.stop(t)
	k2 := newFakeKubelet(t, filepath.Join(t.TempDir()))
	p := newMemPlugin(t, Config{DevDir: h.daemonDir(), KubeletDir: k2.dir, ResourcePrefix: "accel.io", MonitorSlots: 1, Resync: time.Minute, DaemonTimeout: DefaultDaemonTimeout, Logger: testLogger(t)}, h.mem)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	restarted := ids(k2.awaitList(settle, computeRes, 3, 3))
	if !slices.Equal(restarted, after) {
		t.Errorf("IDs after plugin restart = %v, want %v", restarted, after)
	}
}

func ids(l list) []string {
	var out []string
	for _, d := range l.devices {
		out = append(out, d.ID)
	}
	slices.Sort(out)
	return out
}

// kubelet restarts delete our sockets and recreate kubelet.sock; the plugin
// serves new sockets and registers again within a second.
func TestKubeletRestartReregisters(t *testing.T) {
	h := startHarness(t, 2, 1, 2)
	h.kubelet.awaitList(settle, computeRes, 2, 2)
	h.kubelet.awaitList(settle, monitorRes, 4, 4)
	for i := range 3 {
		start := time.Now()
		h.kubelet.restart()
		at := h.kubelet.await(time.Second, "re-registration and a full list after kubelet restart", func(lists map[string]list, regs map[string]int) bool {
			return regs[computeRes] == i+2 && regs[monitorRes] == i+2 &&
				len(lists[computeRes].devices) == 2 && len(lists[monitorRes].devices) == 4
		})
		t.Logf("restart %d: re-registered with full lists in %s", i+1, at.Sub(start))
	}
	// Our sockets exist again and kubelet reaches them.
	for _, name := range []string{"accel.io-ac.sock", "accel.io-ac-monitor.sock"} {
		if socketInode(filepath.Join(h.kubelet.dir, name)) == 0 {
			t.Errorf("socket %s missing after restart", name)
		}
	}
}

// A plugin started before kubelet registers as soon as kubelet.sock appears.
func TestRegistersWhenKubeletAppears(t *testing.T) {
	h := startHarness(t, 1, 1, 1)
	h.kubelet.awaitList(settle, computeRes, 1, 1)
	h.kubelet.awaitList(settle, monitorRes, 1, 1)
	h.kubelet.stop()
	start := time.Now()
	h.kubelet.start()
	at := h.kubelet.await(time.Second, "registration after kubelet came up", func(_ map[string]list, regs map[string]int) bool {
		return regs[computeRes] == 2 && regs[monitorRes] == 2
	})
	t.Logf("registered %s after kubelet.sock appeared", at.Sub(start))
}

// When the device daemon dies, every device turns unhealthy within a
// second, and healthy again when a new daemon serves the same devices.
func TestDaemonKilledAllUnhealthyThenRecovers(t *testing.T) {
	h := startFUSEHarness(t, "the kernel's ENOTCONN from a killed daemon's mount, and a new daemon taking over the dead mount", 3, 1, 2, nil)
	before := ids(h.kubelet.awaitList(settle, computeRes, 3, 3))
	h.kubelet.awaitList(settle, monitorRes, 6, 6)
	start := time.Now()
	h.sim.kill(t)
	h.kubelet.awaitList(time.Second, computeRes, 3, 0)
	at := h.kubelet.awaitList(time.Second, monitorRes, 6, 0).at
	t.Logf("daemon killed → all unhealthy in %s", at.Sub(start))

	// Allocate of a device of the dead daemon is refused with the reason.
	_, err := h.kubelet.client(computeRes).Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: before[:1]}},
	})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "daemon unreachable") {
		t.Errorf("Allocate after daemon death = %v, want FailedPrecondition saying the daemon is unreachable", err)
	}

	// A new daemon on the same directory (same seed: same serials). The
	// dead mount is still there: the new daemon detaches it.
	h.sim = startSim(t, h.sim.dir, 3, 1)
	after := ids(h.kubelet.awaitList(10*time.Second, computeRes, 3, 3))
	if !slices.Equal(before, after) {
		t.Errorf("IDs after daemon restart = %v, want %v", after, before)
	}
}

// 8 concurrent Allocate callers (run with -race) all get consistent answers.
func TestConcurrentAllocate(t *testing.T) {
	h := startHarness(t, 8, 2, 4)
	compute := h.kubelet.awaitList(settle, computeRes, 8, 8)
	h.kubelet.awaitList(settle, monitorRes, 32, 32)
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for g := range 8 {
		wg.Go(func() {
			client := h.kubelet.client(computeRes)
			mon := h.kubelet.client(monitorRes)
			for i := range 50 {
				id := compute.devices[(g+i)%8].ID
				resp, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
					ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{id}}},
				})
				if err != nil {
					errs <- err
					continue
				}
				if len(resp.ContainerResponses[0].Mounts) != 2 {
					errs <- fmt.Errorf("allocate %s: %d mounts", id, len(resp.ContainerResponses[0].Mounts))
				}
				if _, err := mon.Allocate(context.Background(), &pluginapi.AllocateRequest{
					ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{MonitorSlotID(id, g%4)}}},
				}); err != nil {
					errs <- err
				}
			}
		})
	}
	// Changes while allocating: discovery publishes concurrently.
	h.ctl(t, "add")
	h.ctl(t, "remove ac8")
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// On shutdown the plugin removes its own sockets and nothing else.
func TestShutdownRemovesOwnSockets(t *testing.T) {
	h := startHarness(t, 1, 1, 1)
	h.kubelet.awaitList(settle, monitorRes, 1, 1)
	h.stop(t)
	entries, err := os.ReadDir(h.kubelet.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{KubeletSocketName}) {
		t.Errorf("after shutdown the directory holds %v, want only %s", names, KubeletSocketName)
	}
}

func TestPreferredAllocationOverGRPC(t *testing.T) {
	h := startHarness(t, 4, 2, 2)
	compute := h.kubelet.awaitList(settle, computeRes, 4, 4)
	h.kubelet.awaitList(settle, monitorRes, 8, 8)
	byNUMA := map[int64][]string{}
	var all []string
	for _, d := range compute.devices {
		byNUMA[d.Topology.Nodes[0].ID] = append(byNUMA[d.Topology.Nodes[0].ID], d.ID)
		all = append(all, d.ID)
	}
	resp, err := h.kubelet.client(computeRes).GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: all, MustIncludeDeviceIDs: byNUMA[1][:1], AllocationSize: 2,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(slices.Values(resp.ContainerResponses[0].DeviceIDs))
	if want := slices.Sorted(slices.Values(byNUMA[1])); !slices.Equal(got, want) {
		t.Errorf("preferred = %v, want NUMA node 1's devices %v", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{DevDir: "/run/accel/dev", KubeletDir: "/var/lib/kubelet/device-plugins", ResourcePrefix: "accel.io", MonitorSlots: 8, Resync: 30 * time.Second, DaemonTimeout: DefaultDaemonTimeout, StaleViewGrace: 10 * time.Second}
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
	for _, tc := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.DevDir = "dev" }, "--dev-dir must be an absolute path"},
		{func(c *Config) { c.HostDevDir = "x" }, "--host-dev-dir must be an absolute path"},
		{func(c *Config) { c.HostDevDir = "/host/\xff" }, "must be valid UTF-8"},
		{func(c *Config) { c.KubeletDir = "" }, "--kubelet-dir must be an absolute path"},
		{func(c *Config) { c.ResourcePrefix = "Accel.IO" }, "--resource-prefix must be a DNS subdomain"},
		{func(c *Config) { c.ResourcePrefix = "accel.io/x" }, "--resource-prefix must be a DNS subdomain"},
		{func(c *Config) { c.ResourcePrefix = "kubernetes.io" }, "reserved"},
		{func(c *Config) { c.MonitorSlots = -1 }, "--monitor-slots must be between 0 and 1024"},
		{func(c *Config) { c.MonitorSlots = 5000 }, "--monitor-slots must be between 0 and 1024"},
		{func(c *Config) { c.Resync = time.Millisecond }, "--resync must be at least 1s"},
		{func(c *Config) { c.DaemonTimeout = 0 }, "--daemon-timeout must be between 100ms and 1m0s, got 0s"},
		{func(c *Config) { c.DaemonTimeout = time.Hour }, "--daemon-timeout must be between"},
		{func(c *Config) { c.StaleViewGrace = -time.Second }, "--stale-view-grace must be 0"},
	} {
		c := good
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c, err, tc.want)
		}
	}
	c := good
	c.KubeletDir = filepath.Join(t.TempDir(), "missing")
	if _, err := New(c); err == nil || !strings.Contains(err.Error(), "kubelet creates it") {
		t.Errorf("New with a missing kubelet dir = %v, want a hint", err)
	}
}

// A kubelet that refuses registration is retried with backoff until it
// accepts, without a plugin restart.
func TestRegistrationRetriedWithBackoff(t *testing.T) {
	h := startHarness(t, 1, 1, 1)
	h.kubelet.awaitList(settle, computeRes, 1, 1)
	h.kubelet.awaitList(settle, monitorRes, 1, 1)
	h.kubelet.mu.Lock()
	h.kubelet.rejectN = 6 // three refusals per resource
	h.kubelet.mu.Unlock()
	start := time.Now()
	h.kubelet.restart()
	h.kubelet.await(10*time.Second, "registration after 6 refusals", func(_ map[string]list, regs map[string]int) bool {
		return regs[computeRes] == 2 && regs[monitorRes] == 2
	})
	h.kubelet.mu.Lock()
	rejects := h.kubelet.rejects
	h.kubelet.mu.Unlock()
	if rejects != 6 {
		t.Errorf("kubelet refused %d registrations, want 6", rejects)
	}
	// Backoff 100 ms, 200 ms, 400 ms before the fourth try: at least 700 ms.
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("registered after %s: retries did not back off", d)
	} else {
		t.Logf("registered %s after the restart, after 3 refusals per resource", d)
	}
}

// A daemon that dies in the middle of a burst of events (so events are
// buffered while a device read fails) still turns every device unhealthy.
func TestDaemonKilledDuringEventBurst(t *testing.T) {
	h := startHarness(t, 2, 1, 1)
	h.kubelet.awaitList(settle, computeRes, 2, 2)
	h.ctl(t, "add 60")
	h.mem.kill()
	h.kubelet.await(2*time.Second, "every device unhealthy after the daemon died mid-burst", func(lists map[string]list, _ map[string]int) bool {
		l := lists[computeRes]
		return len(l.devices) >= 2 && l.healthy() == 0
	})
}

// The same through FUSE: events the kernel already queued on the event
// file while the daemon dies.
func TestDaemonKilledDuringEventBurstFUSE(t *testing.T) {
	h := startFUSEHarness(t, "events queued in a killed FUSE daemon's event file while its mount turns ENOTCONN", 2, 1, 1, nil)
	h.kubelet.awaitList(settle, computeRes, 2, 2)
	h.sim.ctl(t, "add 60")
	h.sim.kill(t)
	h.kubelet.await(2*time.Second, "every device unhealthy after the daemon died mid-burst", func(lists map[string]list, _ map[string]int) bool {
		l := lists[computeRes]
		return len(l.devices) >= 2 && l.healthy() == 0
	})
}

// chmod of kubelet.sock or of our socket (a relabel, say) is not a kubelet
// restart: no new registration, which kubelet would refuse as a duplicate.
func TestSocketAttributeChangeIsNotARestart(t *testing.T) {
	h := startHarness(t, 1, 1, 1)
	h.kubelet.awaitList(settle, computeRes, 1, 1)
	h.kubelet.awaitList(settle, monitorRes, 1, 1)
	for _, name := range []string{KubeletSocketName, "accel.io-ac.sock"} {
		if err := os.Chmod(filepath.Join(h.kubelet.dir, name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Let the inotify events be handled, then check nothing re-registered.
	deadline := time.After(300 * time.Millisecond)
	for {
		h.kubelet.mu.Lock()
		regs := fmt.Sprint(h.kubelet.registers)
		h.kubelet.mu.Unlock()
		if regs != "map[accel.io/ac:1 accel.io/ac-monitor:1]" {
			t.Fatalf("registrations after chmod = %s, want one each", regs)
		}
		select {
		case <-deadline:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// frontendFunc is a Frontend from a function.
type frontendFunc func(ctx context.Context, store *Store) error

func (f frontendFunc) Run(ctx context.Context, store *Store) error { return f(ctx, store) }
func (f frontendFunc) NotReady() string                            { return "" }

// A Frontend (the DRA driver) replaces the registrar: it starts once every
// source has reported, with the store, and no kubelet device-plugin
// directory is needed; CDI mode is the device-plugin API's and refused.
func TestFrontendReplacesTheRegistrar(t *testing.T) {
	st := newSysTree(t)
	st.habanalabs(0, "0000:3b:00.0", 0)
	st.ivpu(1, "0000:00:0b.0")
	st.qaic(2, "0000:01:00.0", 0)
	classDir, devDir := st.classDir, st.devDir
	started := make(chan int, 1)
	fe := frontendFunc(func(ctx context.Context, store *Store) error {
		snap, _ := store.Load()
		started <- len(snap.Devices)
		<-ctx.Done()
		return nil
	})
	cfg := Config{KernelClassDir: classDir, KernelDevDir: devDir, KubeletDir: "/nonexistent", ResourcePrefix: "accel.io",
		Resync: time.Hour, DaemonTimeout: time.Second, Frontend: fe, Logger: testLogger(t)}
	withCDI := cfg
	withCDI.CDI, withCDI.CDISpecDir = true, "/var/run/cdi"
	if err := withCDI.Validate(); err == nil || !strings.Contains(err.Error(), "--cdi=on is the device-plugin API's") {
		t.Errorf("CDI with a front-end: %v", err)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case n := <-started:
		if n != 3 {
			t.Errorf("the front-end started with %d devices, want the 3 of the first discovery", n)
		}
		// /readyz: the registrar's resources do not count (nobody
		// registers them); the front-end's own reason does.
		if r := p.notReady(); len(r) != 0 {
			t.Errorf("not ready with a front-end: %q", r)
		}
		p.frontend = notReadyFrontend{fe, "the DRA driver is not registered with kubelet yet"}
		if r := p.notReady(); !slices.Equal(r, []string{"the DRA driver is not registered with kubelet yet"}) {
			t.Errorf("not ready = %q, want the front-end's reason only", r)
		}
	case err := <-done:
		t.Fatalf("Run ended before the front-end started: %v", err)
	case <-ctx.Done():
		t.Fatal("the front-end never started")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// notReadyFrontend is a front-end that reports a readiness reason.
type notReadyFrontend struct {
	Frontend
	why string
}

func (f notReadyFrontend) NotReady() string { return f.why }
