package dra

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

const (
	testDomain = "accel.io"
	testNode   = "node-1"
	hostDir    = "/run/accel/dev"
)

// simDevice is a simulated device as discovery reports it.
func simDevice(index int, id string) plugin.Device {
	c, m := accel.ComputeName(index), accel.MonitorName(index)
	mount := func(name string, ro bool) plugin.Mount {
		return plugin.Mount{HostPath: filepath.Join(hostDir, name), ContainerPath: filepath.Join(plugin.ContainerDevDir, name), ReadOnly: ro}
	}
	d := plugin.Device{
		ID: id, Name: c, Index: index, Driver: "accel-sim", Model: "sim-1", NUMANode: index % 2,
		Status: accel.StatusOperational, Healthy: true, Source: "sim:" + hostDir, Simulated: true, Memory: 1 << 30,
	}
	d.Compute.BindMounts[0], d.Compute.BindMounts[1] = mount(c, false), mount(m, true)
	d.Compute.Env = plugin.EnvVisibleDevices
	d.Monitor.BindMounts[0] = mount(m, true)
	d.Monitor.Env = plugin.EnvMonitorDevices
	return d
}

// kernelDevice is a kernel accel device (no monitor node).
func kernelDevice(index int, id string) plugin.Device {
	name := fmt.Sprintf("accel%d", index)
	d := plugin.Device{
		ID: id, Name: name, Index: index, Driver: "habanalabs", Model: "pci 1da3:1020", NUMANode: -1,
		Status: accel.StatusOperational, Healthy: true, Source: "kernel:/sys/class/accel",
		PCIBusID: "0000:3b:00.0", PCIeRoot: "pci0000:3a",
	}
	d.Compute.DeviceNodes[0] = plugin.DeviceNode{HostPath: "/dev/accel/" + name, ContainerPath: "/dev/accel/" + name, Permissions: "rw"}
	d.Compute.Env = plugin.EnvVisibleDevices
	return d
}

func unhealthy(d plugin.Device, st accel.Status, reason string) plugin.Device {
	d.Status, d.Healthy, d.Reason = st, false, reason
	return d
}

// newTestDriver is a driver over a store holding devs, with its
// directories in a fresh temporary directory.
func newTestDriver(t testing.TB, devs ...plugin.Device) (*Driver, *plugin.Store) {
	t.Helper()
	dir := t.TempDir()
	store := plugin.NewStore(nil)
	store.Publish("sim:"+hostDir, devs)
	d, err := New(Config{
		DriverName: testDomain, NodeName: testNode, Client: fake.NewClientset(),
		PluginDataDir: filepath.Join(dir, "plugin"), RegistrarDir: filepath.Join(dir, "registry"),
		CDISpecDir: filepath.Join(dir, "cdi"), MonitorClients: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{d.cfg.PluginDataDir, d.cfg.RegistrarDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	d.store = store
	return d, store
}

type alloc struct {
	request, device string
	admin           bool
	share           types.UID
}

// claim is an allocated claim with results for our driver on this node.
func claim(uid, name string, allocs ...alloc) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid)},
		Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}},
	}
	for _, a := range allocs {
		r := resourceapi.DeviceRequestAllocationResult{Request: a.request, Driver: testDomain, Pool: testNode, Device: a.device}
		if a.admin {
			r.AdminAccess = ptr.To(true)
		}
		if a.share != "" {
			r.ShareID = ptr.To(a.share)
		}
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, r)
	}
	return c
}

// prepare prepares the claims as kubelet would, after storing them in the
// driver's (fake) API server as the scheduler left them: allocated.
func prepare(t *testing.T, d *Driver, claims ...*resourceapi.ResourceClaim) map[types.UID]kubeletplugin.PrepareResult {
	t.Helper()
	for _, c := range claims {
		storeClaim(t, d, c)
	}
	out, err := d.PrepareResourceClaims(context.Background(), claims)
	if err != nil {
		t.Fatalf("PrepareResourceClaims: %v", err)
	}
	if len(out) != len(claims) {
		t.Fatalf("PrepareResourceClaims: %d results for %d claims", len(out), len(claims))
	}
	return out
}

// storeClaim creates or replaces the claim, with its status, in the
// driver's API server.
func storeClaim(t testing.TB, d *Driver, c *resourceapi.ResourceClaim) {
	t.Helper()
	claims := d.cfg.Client.ResourceV1().ResourceClaims(c.Namespace)
	if _, err := claims.Create(context.Background(), c, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err := claims.Update(context.Background(), c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	// The fake API server does not keep status on create.
	if _, err := claims.UpdateStatus(context.Background(), c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func unprepare(t *testing.T, d *Driver, uids ...string) {
	t.Helper()
	var objs []kubeletplugin.NamespacedObject
	for _, u := range uids {
		objs = append(objs, kubeletplugin.NamespacedObject{UID: types.UID(u), NamespacedName: types.NamespacedName{Namespace: "ns", Name: "c-" + u}})
	}
	out, err := d.UnprepareResourceClaims(context.Background(), objs)
	if err != nil {
		t.Fatalf("UnprepareResourceClaims: %v", err)
	}
	for uid, err := range out {
		if err != nil {
			t.Fatalf("unprepare %s: %v", uid, err)
		}
	}
}

// readSpec reads the claim's CDI spec from the driver's spec directory.
func readSpec(t *testing.T, d *Driver, uid string) *cdispec.Spec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.cfg.CDISpecDir, "accel.io-claim_"+uid+".json"))
	if err != nil {
		t.Fatalf("claim %s's CDI spec: %v", uid, err)
	}
	var s cdispec.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func specExists(d *Driver, uid string) bool {
	_, err := os.Stat(filepath.Join(d.cfg.CDISpecDir, "accel.io-claim_"+uid+".json"))
	return err == nil
}

// summary is a CDI device's edits as "container-path(ro|rw)" mounts,
// device nodes and env, for comparing.
func summary(dev cdispec.Device) string {
	var parts []string
	for _, m := range dev.ContainerEdits.Mounts {
		parts = append(parts, "mount:"+m.HostPath+">"+m.ContainerPath+":"+strings.Join(m.Options, ","))
	}
	for _, n := range dev.ContainerEdits.DeviceNodes {
		parts = append(parts, "node:"+n.HostPath+">"+n.Path+":"+n.Permissions)
	}
	parts = append(parts, dev.ContainerEdits.Env...)
	return strings.Join(parts, " ")
}

func TestPrepareComputeGivesWhatTheDevicePluginGives(t *testing.T) {
	d, _ := newTestDriver(t, simDevice(0, "SIM-A"), simDevice(1, "SIM-B"), simDevice(2, "SIM-C"))
	res := prepare(t, d, claim("u1", "c-u1", alloc{request: "acc", device: "ac2"}, alloc{request: "acc", device: "ac0"}))["u1"]
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if len(res.Devices) != 2 {
		t.Fatalf("want 2 devices in the result, got %+v", res.Devices)
	}
	want := "accel.io/claim=u1-acc"
	if got := res.Devices[0].CDIDeviceIDs; !slices.Equal(got, []string{want}) {
		t.Errorf("first device's CDI IDs %v, want [%s]", got, want)
	}
	if got := res.Devices[1].CDIDeviceIDs; len(got) != 0 {
		t.Errorf("second device of the request repeats CDI IDs %v (the request's CDI device holds both)", got)
	}
	for _, dev := range res.Devices {
		if dev.PoolName != testNode || !slices.Equal(dev.Requests, []string{"acc"}) {
			t.Errorf("device %+v: want pool %s and request acc", dev, testNode)
		}
	}
	spec := readSpec(t, d, "u1")
	if spec.Kind != "accel.io/claim" || len(spec.Devices) != 1 || spec.Devices[0].Name != "u1-acc" {
		t.Fatalf("spec kind %q devices %+v", spec.Kind, spec.Devices)
	}
	// Index order, as the device plugin lists them: ac0 before ac2.
	wantEdits := "mount:/run/accel/dev/ac0>/dev/accel/ac0:bind,rw mount:/run/accel/dev/ac0_monitor>/dev/accel/ac0_monitor:bind,ro " +
		"mount:/run/accel/dev/ac2>/dev/accel/ac2:bind,rw mount:/run/accel/dev/ac2_monitor>/dev/accel/ac2_monitor:bind,ro " +
		"ACCEL_VISIBLE_DEVICES=ac0,ac2"
	if got := summary(spec.Devices[0]); got != wantEdits {
		t.Errorf("CDI edits\n got %s\nwant %s", got, wantEdits)
	}

	// Asked again (kubelet restarted): the same answer, nothing new.
	again := prepare(t, d, claim("u1", "c-u1", alloc{request: "acc", device: "ac2"}, alloc{request: "acc", device: "ac0"}))["u1"]
	if again.Err != nil || len(again.Devices) != 2 || !slices.Equal(again.Devices[0].CDIDeviceIDs, []string{want}) {
		t.Errorf("second prepare: %+v", again)
	}
}

func TestPrepareKernelDeviceNode(t *testing.T) {
	d, _ := newTestDriver(t, kernelDevice(0, "hl-0000-3b-00.0"))
	if res := prepare(t, d, claim("u1", "c-u1", alloc{request: "r", device: "accel0"}))["u1"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	if got, want := summary(readSpec(t, d, "u1").Devices[0]), "node:/dev/accel/accel0>/dev/accel/accel0:rw ACCEL_VISIBLE_DEVICES=accel0"; got != want {
		t.Errorf("CDI edits %s, want %s", got, want)
	}
}

func TestPrepareRefusals(t *testing.T) {
	d, _ := newTestDriver(t, simDevice(0, "SIM-A"), unhealthy(simDevice(1, "SIM-B"), accel.StatusMalfunction, "status Malfunction"), kernelDevice(5, "K"))
	if res := prepare(t, d, claim("held", "c-held", alloc{request: "r", device: "ac0"}))["held"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	wrongPool := claim("u5", "c-u5", alloc{request: "r", device: "ac0"})
	wrongPool.Status.Allocation.Devices.Results[0].Pool = "node-2"
	unallocated := claim("u6", "c-u6")
	unallocated.Status.Allocation = nil
	for _, tc := range []struct {
		claim *resourceapi.ResourceClaim
		want  string
	}{
		{claim("u1", "c-u1", alloc{request: "r", device: "ac0"}), "already prepared for claim ns/c-held (held)"},
		{claim("u2", "c-u2", alloc{request: "r", device: "ac1"}), "device ac1 (SIM-B) is unhealthy: status Malfunction"},
		{claim("u3", "c-u3", alloc{request: "r", device: "ac7"}), "device ac7 is not on node node-1 any more"},
		{claim("u4", "c-u4", alloc{request: "r", device: "accel5-monitor"}), "device accel5 has no monitor node"},
		{claim("u7", "c-u7", alloc{request: "r", device: "accel5", admin: true}), "admin access to device accel5 gives its monitor node only, and it has none"},
		{wrongPool, `allocated from pool "node-2", but this node's pool is "node-1"`},
		{unallocated, "not allocated"},
	} {
		uid := tc.claim.UID
		res := prepare(t, d, tc.claim)[uid]
		if res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) {
			t.Errorf("claim %s: error %v, want one containing %q", uid, res.Err, tc.want)
		}
		if specExists(d, string(uid)) {
			t.Errorf("claim %s: refused, yet its CDI spec was written", uid)
		}
	}
	// The refused claims left the checkpoint as it was.
	cp, err := loadCheckpoint(d.ckpt)
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.Claims) != 1 || cp.Claims["held"] == nil {
		t.Errorf("checkpoint claims %v, want only held", cp.Claims)
	}
}

func TestMonitorSharedAndAdminAccessGetsMonitorOnly(t *testing.T) {
	d, _ := newTestDriver(t, simDevice(0, "SIM-A"))
	out := prepare(t, d,
		claim("c", "c-c", alloc{request: "r", device: "ac0"}),
		claim("m1", "c-m1", alloc{request: "mon", device: "ac0-monitor", share: "s1"}),
		claim("m2", "c-m2", alloc{request: "mon", device: "ac0-monitor", share: "s2"}),
		claim("adm", "c-adm", alloc{request: "all", device: "ac0", admin: true}),
	)
	for uid, res := range out {
		if res.Err != nil {
			t.Fatalf("claim %s: %v", uid, res.Err)
		}
	}
	if got := out["m2"].Devices[0].ShareID; got == nil || *got != "s2" {
		t.Errorf("share ID %v, want s2", got)
	}
	monitorOnly := "mount:/run/accel/dev/ac0_monitor>/dev/accel/ac0_monitor:bind,ro ACCEL_MONITOR_DEVICES=ac0"
	for _, uid := range []string{"m1", "m2", "adm"} {
		if got := summary(readSpec(t, d, uid).Devices[0]); got != monitorOnly {
			t.Errorf("claim %s: edits %s, want %s", uid, got, monitorOnly)
		}
	}
}

func TestUnprepareFreesTheDevice(t *testing.T) {
	d, _ := newTestDriver(t, simDevice(0, "SIM-A"))
	if res := prepare(t, d, claim("u1", "c-u1", alloc{request: "r", device: "ac0"}))["u1"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	unprepare(t, d, "u1")
	if specExists(d, "u1") {
		t.Error("the spec of an unprepared claim is still there")
	}
	unprepare(t, d, "u1", "never-prepared") // idempotent
	if res := prepare(t, d, claim("u2", "c-u2", alloc{request: "r", device: "ac0"}))["u2"]; res.Err != nil {
		t.Errorf("the device of an unprepared claim is not free: %v", res.Err)
	}
}

func TestRestoreAfterReboot(t *testing.T) {
	d, store := newTestDriver(t, simDevice(0, "SIM-A"), simDevice(1, "SIM-B"))
	if res := prepare(t, d, claim("u1", "c-u1", alloc{request: "r", device: "ac1"}))["u1"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	before := readSpec(t, d, "u1")
	// A reboot empties /var/run/cdi (tmpfs); a spec of a claim unprepared
	// while the plugin was down is left behind.
	if err := os.RemoveAll(d.cfg.CDISpecDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d.cfg.CDISpecDir, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(d.cfg.CDISpecDir, "accel.io-claim_gone.json")
	other := filepath.Join(d.cfg.CDISpecDir, "vendor.com-gpu.json")
	for _, f := range []string{stale, other} {
		if err := os.WriteFile(f, []byte(`{}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The device is not even discovered yet: the checkpoint alone rebuilds the spec.
	store.Publish("sim:"+hostDir, nil)
	d2, err := New(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.restore(); err != nil {
		t.Fatal(err)
	}
	if after := readSpec(t, d2, "u1"); summary(after.Devices[0]) != summary(before.Devices[0]) {
		t.Errorf("restored spec %s, want %s", summary(after.Devices[0]), summary(before.Devices[0]))
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale claim spec: %v, want it removed", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another vendor's spec: %v, want it left alone", err)
	}
}

func TestCorruptCheckpointIsRefused(t *testing.T) {
	d, _ := newTestDriver(t, simDevice(0, "SIM-A"))
	if res := prepare(t, d, claim("u1", "c-u1", alloc{request: "r", device: "ac0"}))["u1"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	b, err := os.ReadFile(d.ckpt)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]byte{
		"torn":    b[:len(b)/2],
		"edited":  []byte(strings.Replace(string(b), "u1", "u9", 1)),
		"version": []byte(strings.Replace(string(b), `"version":1,`, `"version":7,`, 1)),
	} {
		if err := os.WriteFile(d.ckpt, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := d.restore(); err == nil || !strings.Contains(err.Error(), "checkpoint") {
			t.Errorf("%s checkpoint: restore error %v, want one naming the checkpoint", name, err)
		}
		if _, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{claim("u2", "c-u2", alloc{request: "r", device: "ac0"})}); err == nil {
			t.Errorf("%s checkpoint: prepare succeeded (the device's holder is unknown)", name)
		}
	}
}

// sliceDevices are the devices of the published pool, by name.
func sliceDevices(t *testing.T, snap *plugin.Snapshot, held []gone) (map[string]resourceapi.Device, int) {
	t.Helper()
	res := resources(entries(snap, held, testDomain, 4), testNode)
	pool, ok := res.Pools[testNode]
	if !ok || len(res.Pools) != 1 {
		t.Fatalf("pools %v, want one named %s", res.Pools, testNode)
	}
	out := map[string]resourceapi.Device{}
	for _, s := range pool.Slices {
		if len(s.Devices) > resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures {
			t.Errorf("a slice holds %d devices, more than the API takes with taints", len(s.Devices))
		}
		for _, dev := range s.Devices {
			if _, dup := out[dev.Name]; dup {
				t.Errorf("device %s published twice", dev.Name)
			}
			out[dev.Name] = dev
		}
	}
	return out, len(pool.Slices)
}

func TestSliceDevices(t *testing.T) {
	store := plugin.NewStore(nil)
	store.Publish("sim", []plugin.Device{simDevice(0, "SIM-A"), unhealthy(simDevice(1, "SIM-B"), accel.StatusNeedsReset, "status NeedsReset")})
	store.Publish("kernel", []plugin.Device{kernelDevice(0, strings.Repeat("x", 100))})
	snap, _ := store.Load()
	devs, _ := sliceDevices(t, snap, []gone{{name: "ac3", id: "SIM-D", kind: KindCompute}})

	names := slices.Sorted(func(yield func(string) bool) {
		for n := range devs {
			if !yield(n) {
				return
			}
		}
	})
	if want := []string{"ac0", "ac0-monitor", "ac1", "ac1-monitor", "ac3", "accel0"}; !slices.Equal(names, want) {
		t.Fatalf("devices %v, want %v", names, want)
	}
	ac0 := devs["ac0"]
	for attr, want := range map[resourceapi.QualifiedName]string{
		AttrSerial: "SIM-A", AttrModel: "sim-1", AttrDriver: "accel-sim", AttrKind: KindCompute,
	} {
		if v := ac0.Attributes[attr].StringValue; v == nil || *v != want {
			t.Errorf("ac0 %s = %v, want %q", attr, v, want)
		}
	}
	if v := ac0.Attributes[AttrNUMANode].IntValue; v == nil || *v != 0 {
		t.Errorf("ac0 numaNode %v, want 0", v)
	}
	if v := ac0.Attributes[AttrSimulated].BoolValue; v == nil || !*v {
		t.Errorf("ac0 simulated %v, want true", v)
	}
	if q := ac0.Capacity[CapMemory].Value; q.Value() != 1<<30 {
		t.Errorf("ac0 memory %s, want 1Gi", q.String())
	}
	if len(ac0.Taints) != 0 {
		t.Errorf("healthy ac0 has taints %v", ac0.Taints)
	}
	mon := devs["ac0-monitor"]
	if mon.AllowMultipleAllocations == nil || !*mon.AllowMultipleAllocations {
		t.Error("the monitor device does not allow multiple allocations")
	}
	if c := mon.Capacity[CapClients]; c.Value.Value() != 4 || c.RequestPolicy == nil || c.RequestPolicy.Default.Value() != 1 {
		t.Errorf("monitor clients capacity %+v, want 4 with default 1", c)
	}
	for _, name := range []string{"ac1", "ac1-monitor"} {
		if got := devs[name].Taints; len(got) != 1 || got[0].Key != "accel.io/unhealthy" || got[0].Value != TaintNeedsReset || got[0].Effect != resourceapi.DeviceTaintEffectNoSchedule {
			t.Errorf("%s taints %+v, want accel.io/unhealthy=NeedsReset:NoSchedule", name, got)
		}
	}
	if got := devs["ac3"].Taints; len(got) != 1 || got[0].Effect != resourceapi.DeviceTaintEffectNoExecute || got[0].Value != TaintRemoved {
		t.Errorf("gone ac3 taints %+v, want Removed:NoExecute", got)
	}
	k := devs["accel0"]
	if _, ok := k.Attributes[AttrSerial]; ok {
		t.Error("a 100-character ID became a serial attribute (the API takes 64)")
	}
	if _, ok := k.Attributes[AttrNUMANode]; ok {
		t.Error("unknown NUMA node published")
	}
	if v := k.Attributes["resource.kubernetes.io/pcieRoot"].StringValue; v == nil || *v != "pci0000:3a" {
		t.Errorf("pcieRoot %v, want pci0000:3a", v)
	}
}

// habanalabs' control node is its monitor device: the compute device
// carries both nodes, the monitor device is shared.
func TestKernelControlNodeIsTheMonitorDevice(t *testing.T) {
	d := kernelDevice(1, "habanalabs-0000-3b-00.0")
	ctrl := plugin.DeviceNode{HostPath: "/dev/accel/accel_controlD1", ContainerPath: "/dev/accel/accel_controlD1", Permissions: "rw"}
	d.Compute.DeviceNodes[1] = ctrl
	d.Monitor.DeviceNodes[0] = ctrl
	d.Monitor.Env = plugin.EnvMonitorDevices
	store := plugin.NewStore(nil)
	store.Publish("kernel", []plugin.Device{d})
	snap, _ := store.Load()
	devs, _ := sliceDevices(t, snap, nil)
	mon, ok := devs["accel1-monitor"]
	if !ok {
		t.Fatalf("no monitor device for the control node: %v", devs)
	}
	if mon.AllowMultipleAllocations == nil || !*mon.AllowMultipleAllocations {
		t.Error("the control node's monitor device is not shared")
	}
	if v := mon.Attributes[AttrKind].StringValue; v == nil || *v != KindMonitor {
		t.Errorf("kind %v, want %s", v, KindMonitor)
	}
}

func TestTaintFollowsHealthBothWays(t *testing.T) {
	store := plugin.NewStore(nil)
	taints := func() []resourceapi.DeviceTaint {
		snap, _ := store.Load()
		devs, _ := sliceDevices(t, snap, nil)
		return devs["ac0"].Taints
	}
	for _, tc := range []struct {
		dev  plugin.Device
		want string // taint value, "" none
	}{
		{simDevice(0, "A"), ""},
		{unhealthy(simDevice(0, "A"), accel.StatusInReset, "status InReset"), TaintInReset},
		{unhealthy(simDevice(0, "A"), accel.StatusMalfunction, "status Malfunction"), TaintMalfunction},
		{unhealthy(simDevice(0, "A"), accel.StatusOperational, "device daemon not responding"), TaintUnreachable},
		{simDevice(0, "A"), ""}, // reset and operational: the taint is gone again
	} {
		store.Publish("sim", []plugin.Device{tc.dev})
		got := taints()
		switch {
		case tc.want == "" && len(got) != 0:
			t.Errorf("%s: taints %v, want none", tc.dev.Reason, got)
		case tc.want != "" && (len(got) != 1 || got[0].Value != tc.want):
			t.Errorf("%s: taints %v, want %s", tc.dev.Reason, got, tc.want)
		}
	}
}

func TestSlicesSplitAtTheAPILimit(t *testing.T) {
	var devs []plugin.Device
	for i := range 128 {
		devs = append(devs, simDevice(i, fmt.Sprintf("SIM-%03d", i)))
	}
	store := plugin.NewStore(nil)
	store.Publish("sim", devs)
	snap, _ := store.Load()
	got, slicesN := sliceDevices(t, snap, nil)
	if len(got) != 256 || slicesN != 4 {
		t.Errorf("%d devices in %d slices, want 256 in 4", len(got), slicesN)
	}
}

func TestHealthReport(t *testing.T) {
	d, store := newTestDriver(t, simDevice(0, "SIM-A"), unhealthy(simDevice(1, "SIM-B"), accel.StatusMalfunction, "status Malfunction"))
	snap, _ := store.Load()
	rep := d.healthReport(snap, []gone{{name: "ac2", id: "SIM-C", kind: KindCompute}}, metav1.Now().Time)
	got := map[string]string{}
	for _, h := range rep.Devices {
		if h.PoolName != testNode || h.HealthCheckTimeout != healthTimeout {
			t.Errorf("%+v: want pool %s, timeout %s", h, testNode, healthTimeout)
		}
		got[h.DeviceName] = string(h.Health) + ":" + h.Message
	}
	want := map[string]string{
		"ac0": "Healthy:", "ac0-monitor": "Healthy:",
		"ac1": "Unhealthy:status Malfunction", "ac1-monitor": "Unhealthy:status Malfunction",
		"ac2": "Unhealthy:device removed (it was SIM-C)",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("health\n got %v\nwant %v", got, want)
	}
}

func TestHeldDevicesAreThoseGone(t *testing.T) {
	d, store := newTestDriver(t, simDevice(0, "SIM-A"), simDevice(1, "SIM-B"))
	if res := prepare(t, d, claim("u1", "c-u1", alloc{request: "r", device: "ac0"}, alloc{request: "m", device: "ac1-monitor"}))["u1"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	snap, _ := store.Load()
	if held, _ := d.heldDevices(snap); len(held) != 0 {
		t.Errorf("held %v while every device is there", held)
	}
	// ac0 unplugged; ac1 replaced by another device at the same node.
	store.Publish("sim:"+hostDir, []plugin.Device{simDevice(1, "SIM-NEW")})
	snap, _ = store.Load()
	held, _ := d.heldDevices(snap)
	want := []gone{{name: "ac0", id: "SIM-A", kind: KindCompute}, {name: "ac1-monitor", id: "SIM-B", kind: KindMonitor}}
	if !slices.Equal(held, want) {
		t.Errorf("held %+v, want %+v", held, want)
	}
	unprepare(t, d, "u1")
	if held, _ := d.heldDevices(snap); len(held) != 0 {
		t.Errorf("held %v after the claim was unprepared", held)
	}
}

// Facts discovery could not read are left out, not published as "".
func TestUnknownFactsAreNotPublished(t *testing.T) {
	d := kernelDevice(3, "K")
	d.Driver, d.Model = "", ""
	dev := devices(d, testDomain, 4)[0]
	for _, attr := range []resourceapi.QualifiedName{AttrDriver, AttrModel, AttrNUMANode, CapMemory} {
		if v, ok := dev.Attributes[attr]; ok {
			t.Errorf("unknown %s published as %+v", attr, v)
		}
	}
	if _, ok := dev.Capacity[CapMemory]; ok {
		t.Error("unknown memory published")
	}
}

// Two driver instances share the checkpoint (a rolling update): each sees
// what the other wrote, whatever it decoded before.
func TestCheckpointSharedByTwoInstances(t *testing.T) {
	d1, store := newTestDriver(t, simDevice(0, "SIM-A"))
	d2, err := New(d1.cfg)
	if err != nil {
		t.Fatal(err)
	}
	d2.store = store
	if res := prepare(t, d1, claim("u1", "c-u1", alloc{request: "r", device: "ac0"}))["u1"]; res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := prepare(t, d2, claim("u2", "c-u2", alloc{request: "r", device: "ac0"}))["u2"]; res.Err == nil {
		t.Fatal("the second instance gave a device the first had prepared for another claim")
	}
	unprepare(t, d2, "u1")
	if res := prepare(t, d1, claim("u3", "c-u3", alloc{request: "r", device: "ac0"}))["u3"]; res.Err != nil {
		t.Errorf("the first instance did not see the second's unprepare: %v", res.Err)
	}
}

// A claim still prepared for a device that the API server has since
// allocated to another claim (its pod went while kubelet restarted, so
// kubelet has not unprepared it yet) is released when the new claim is
// prepared: deleted, replaced under its name, or deallocated. A holder
// still allocated, or one whose state cannot be read, is not.
func TestPrepareReleasesStaleHolder(t *testing.T) {
	d, _ := newTestDriver(t, simDevice(0, "SIM-A"), simDevice(1, "SIM-B"))
	claims := d.cfg.Client.ResourceV1().ResourceClaims("ns")
	mustPrepare := func(c *resourceapi.ResourceClaim) {
		t.Helper()
		if res := prepare(t, d, c)[c.UID]; res.Err != nil {
			t.Fatalf("claim %s: %v", c.UID, res.Err)
		}
	}
	mustPrepare(claim("old", "c-old", alloc{request: "r", device: "ac0"}))

	// Still allocated in the API: a real conflict.
	if res := prepare(t, d, claim("new", "c-new", alloc{request: "r", device: "ac0"}))["new"]; res.Err == nil || !strings.Contains(res.Err.Error(), "already prepared for claim ns/c-old (old)") {
		t.Fatalf("holder still allocated: %v", res.Err)
	}
	// The API server cannot be read: kept, refused.
	fc := d.cfg.Client.(*fake.Clientset)
	fc.PrependReactor("get", "resourceclaims", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{claim("new", "c-new", alloc{request: "r", device: "ac0"})}); err != nil {
		t.Fatal(err)
	}
	if _, ok := mustLoad(t, d).Claims["old"]; !ok {
		t.Fatal("the holder was released although its state could not be read")
	}
	fc.ReactionChain = fc.ReactionChain[1:]

	for _, tc := range []struct {
		name  string
		stale func()
	}{
		{"deleted", func() {
			if err := claims.Delete(context.Background(), "c-old", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}},
		{"replaced under its name", func() { storeClaim(t, d, claim("other-uid", "c-old", alloc{request: "r", device: "ac1"})) }},
		{"deallocated", func() {
			c := claim("old", "c-old")
			c.Status.Allocation = nil
			storeClaim(t, d, c)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.stale()
			out, err := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{claim("new", "c-new", alloc{request: "r", device: "ac0"})})
			if err != nil || out["new"].Err != nil {
				t.Fatalf("prepare after the holder went stale: %v %v", err, out["new"].Err)
			}
			cp := mustLoad(t, d)
			if _, ok := cp.Claims["old"]; ok || cp.Claims["new"] == nil {
				t.Errorf("checkpoint claims %v: want new, not old", cp.Claims)
			}
			if specExists(d, "old") || !specExists(d, "new") {
				t.Errorf("specs: old %t new %t, want only new", specExists(d, "old"), specExists(d, "new"))
			}
			// Kubelet unprepares the stale claim later: nothing to do.
			unprepare(t, d, "old")
			if cp := mustLoad(t, d); cp.Claims["new"] == nil {
				t.Error("unpreparing the stale claim dropped the new one")
			}
			// Back to the start for the next case.
			unprepare(t, d, "new")
			if err := claims.Delete(context.Background(), "c-old", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
			mustPrepare(claim("old", "c-old", alloc{request: "r", device: "ac0"}))
		})
	}
}

func mustLoad(t *testing.T, d *Driver) *checkpoint {
	t.Helper()
	cp, err := loadCheckpoint(d.ckpt)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// encode writes what json.Marshal of the file struct would, byte for byte.
func TestCheckpointEncodeIsMarshal(t *testing.T) {
	c := newCheckpoint()
	c.Claims["u1"] = &preparedClaim{Namespace: "ns", Name: `c "1"`, Devices: []preparedDevice{{Request: "r", Device: "ac0", ID: "SIM-A", Use: useCompute}}}
	got, err := c.encode()
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want, err := json.Marshal(checkpointFile{Version: checkpointVersion, Checksum: hex.EncodeToString(sum[:]), Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("encode:\n%s\nwant json.Marshal's\n%s", got, want)
	}
	if _, err := decodeCheckpoint("x", got); err != nil {
		t.Errorf("decode of encode: %v", err)
	}
}
