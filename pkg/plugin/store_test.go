package plugin

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

func dev(id string, index, numa int) Device {
	d := Device{ID: id, Name: accel.ComputeName(index), Index: index, NUMANode: numa, Status: accel.StatusOperational, Simulated: true}
	d.Compute, d.Monitor = simEdits("", index) // a simulated device, nodes at relative paths
	d.health()
	return d
}

func TestStorePublishesOnlyChanges(t *testing.T) {
	s := NewStore(nil)
	snap0, changed0 := s.Load()
	if snap0.Version != 0 {
		t.Fatalf("new store at version %d", snap0.Version)
	}
	if v := s.Publish("a", nil); v != 1 {
		t.Fatalf("first publish (even empty) = version %d, want 1: watchers must learn discovery reported", v)
	}
	select {
	case <-changed0:
	default:
		t.Fatal("publish did not wake watchers")
	}
	devs := []Device{dev("B", 1, 0), dev("A", 0, 1)}
	if v := s.Publish("a", devs); v != 2 {
		t.Fatalf("version %d, want 2", v)
	}
	_, changed := s.Load()
	// Same devices in another order: no new version, nobody woken.
	if v := s.Publish("a", []Device{devs[1], devs[0]}); v != 2 {
		t.Fatalf("republishing the same devices made version %d", v)
	}
	select {
	case <-changed:
		t.Fatal("an unchanged publish woke watchers")
	default:
	}
	snap, _ := s.Load()
	if snap.Devices[0].ID != "A" || snap.Devices[1].ID != "B" {
		t.Fatalf("devices not in index order: %+v", snap.Devices)
	}
	// The published slice is the store's own: the caller's edits do not leak.
	devs[0].Healthy = false
	if d, _ := snap.Device("B"); !d.Healthy {
		t.Fatal("a caller's slice edit changed a published snapshot")
	}
	// A second source adds; the same ID from two sources is listed once.
	s.Publish("b", []Device{dev("C", 0, 0), dev("A", 5, 0)})
	snap, _ = s.Load()
	if len(snap.Devices) != 3 {
		t.Fatalf("devices = %+v, want A, B, C once each", snap.Devices)
	}
	if d, _ := snap.Device("A"); d.Index != 0 {
		t.Fatalf("duplicate ID: the first source should win, got %+v", d)
	}
}

func TestHealthFollowsStatusBothWays(t *testing.T) {
	for _, tc := range []struct {
		status  accel.Status
		healthy bool
	}{
		{accel.StatusOperational, true},
		{accel.StatusInReset, false},
		{accel.StatusMalfunction, false},
		{accel.StatusNeedsReset, false},
		{accel.StatusRemoved, false},
	} {
		d := Device{Status: tc.status, Healthy: !tc.healthy, Reason: "stale"}
		d.health()
		if d.Healthy != tc.healthy || (d.Reason == "") != tc.healthy {
			t.Errorf("status %s: healthy=%v reason=%q", tc.status, d.Healthy, d.Reason)
		}
	}
}

func TestMonitorSlotIDs(t *testing.T) {
	for _, tc := range []struct {
		id   string
		dev  string
		okay bool
	}{
		{"SIM-0123-m0", "SIM-0123", true},
		{"SIM-0123-m17", "SIM-0123", true},
		{"a-m-m3", "a-m", true},
		{"SIM-0123", "", false},
		{"SIM-0123-m", "", false},
		{"SIM-0123-mx", "", false},
		{"-m3", "", false},
	} {
		dev, ok := parseMonitorSlotID(tc.id)
		if ok != tc.okay || dev != tc.dev {
			t.Errorf("parseMonitorSlotID(%q) = %q, %v; want %q, %v", tc.id, dev, ok, tc.dev, tc.okay)
		}
	}
	if id := MonitorSlotID("SIM-1", 3); id != "SIM-1-m3" {
		t.Errorf("MonitorSlotID = %q", id)
	}
}

// Two sources reporting one device ID: the first source by name keeps it,
// the other device is not advertised, and that is logged once while it
// lasts (again if it comes back). Before, the device vanished silently.
func TestStoreSharedIDAcrossSources(t *testing.T) {
	logs := &syncBuffer{}
	s := NewStore(slog.New(slog.NewTextHandler(logs, nil)))
	a, b := dev("SIM-1", 0, 0), dev("SIM-1", 3, 0)
	a.Source, b.Source = "sim:/run/a", "sim:/run/b"
	other := dev("SIM-2", 4, 0)
	other.Source = b.Source
	s.Publish(a.Source, []Device{a})
	s.Publish(b.Source, []Device{b})
	s.Publish(b.Source, []Device{b, other}) // still shadowed: no second line
	snap, _ := s.Load()
	if len(snap.Devices) != 2 || snap.Devices[0].Name != "ac0" || snap.Devices[0].Source != a.Source || snap.Devices[1].ID != "SIM-2" {
		t.Fatalf("devices %+v, want ac0 of %s and SIM-2", snap.Devices, a.Source)
	}
	if n := strings.Count(logs.String(), "another source reports the same device ID"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, logs.String())
	}
	for _, want := range []string{"id=SIM-1", "device=ac3", "source=sim:/run/b", "advertised_device=ac0", "advertised_source=sim:/run/a"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("warning lacks %s:\n%s", want, logs.String())
		}
	}
	s.Publish(b.Source, []Device{other})
	s.Publish(b.Source, []Device{b, other})
	if n := strings.Count(logs.String(), "another source reports the same device ID"); n != 2 {
		t.Fatalf("%d warnings after the device came back, want 2:\n%s", n, logs.String())
	}
	// The advertised one goes: the shadowed one takes its ID, and says so.
	s.Publish(a.Source, nil)
	if snap, _ := s.Load(); len(snap.Devices) != 2 || snap.Devices[0].Source != b.Source || snap.Devices[0].Name != "ac3" {
		t.Fatalf("devices %+v, want %s's ac3 advertised", snap.Devices, b.Source)
	}
	if !strings.Contains(logs.String(), "device advertised: the other source's device with its ID is gone") {
		t.Errorf("no line saying ac3 is advertised now:\n%s", logs.String())
	}
}
