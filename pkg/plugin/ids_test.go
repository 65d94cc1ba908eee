package plugin

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

func TestValidIDAndCleanText(t *testing.T) {
	for id, want := range map[string]bool{
		"SIM-0123456789AB": true, "AN-0042": true, "habanalabs-0000-3b-00.0": true, "a": true,
		"": false, "-x": false, ".x": false, "a b": false, "a/b": false, "a\xffb": false, "é": false,
		strings.Repeat("a", maxIDLen): true, strings.Repeat("a", maxIDLen+1): false,
	} {
		if got := validID(id); got != want {
			t.Errorf("validID(%q) = %v, want %v", id, got, want)
		}
	}
	for in, want := range map[string]string{
		"pci 8086:643e": "pci 8086:643e",
		"bad\xffbyte":   "bad\uFFFDbyte",
		"line\nbreak":   "line?break",
	} {
		if got := cleanText(in); got != want {
			t.Errorf("cleanText(%q) = %q, want %q", in, got, want)
		}
	}
	long := cleanText(strings.Repeat("é", maxTextLen))
	if len(long) > maxTextLen || !utf8.ValidString(long) {
		t.Errorf("cleanText of a long string: %d bytes, valid UTF-8 %v", len(long), utf8.ValidString(long))
	}
	if a, b := hashedID("x\xff"), hashedID("x\xfe"); a == b || !validID(a) || hashedID("x\xff") != a {
		t.Errorf("hashedID not stable, distinct and valid: %q %q", a, b)
	}
}

// kernelDev is one device of a fake sysfs.
type kernelDev struct {
	name, pci, serial string
}

// kernelSysfs builds /sys/class/accel with the given devices (habanalabs,
// NUMA 0) and an empty /dev/accel: no character device nodes, so it needs
// no root; the devices are then unhealthy ("node missing") but identified.
func kernelSysfs(t *testing.T, devs ...kernelDev) (classDir, devDir string) {
	t.Helper()
	root := t.TempDir()
	classDir, devDir = filepath.Join(root, "sys/class/accel"), filepath.Join(root, "dev/accel")
	write := func(path, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		pci := filepath.Join(root, "sys/devices/pci0000:00", d.pci)
		write(filepath.Join(pci, "numa_node"), "0")
		write(filepath.Join(pci, "vendor"), "0x1da3")
		write(filepath.Join(pci, "device"), "0x1020")
		if d.serial != "" {
			write(filepath.Join(pci, "serial_number"), d.serial)
		}
		if err := os.Symlink(filepath.Join(root, "sys/bus/pci/drivers/habanalabs"), filepath.Join(pci, "driver")); err != nil {
			t.Fatal(err)
		}
		cls := filepath.Join(classDir, d.name)
		write(filepath.Join(cls, "status"), "operational")
		if err := os.Symlink(pci, filepath.Join(cls, "device")); err != nil {
			t.Fatal(err)
		}
	}
	return classDir, devDir
}

// logBuffer collects log lines for tests that check warnings.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

func startKernelSource(t *testing.T, classDir, devDir string, log *slog.Logger) *Store {
	t.Helper()
	store := NewStore(nil)
	src := &KernelSource{ClassDir: classDir, DevDir: devDir, Resync: time.Hour, Store: store, Logger: log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return store
}

// Item 8: one serial_number that is not UTF-8 used to make every
// ListAndWatch response fail to marshal (kubelet got no list at all). Now
// that device falls back to its PCI-derived ID, with a warning, and the
// list of every device marshals.
func TestNonUTF8SerialDoesNotBreakTheList(t *testing.T) {
	classDir, devDir := kernelSysfs(t,
		kernelDev{"accel0", "0000:3b:00.0", "AN\xff\xfe42"},
		kernelDev{"accel1", "0000:5e:00.0", "AN-0043"},
	)
	var logs logBuffer
	store := startKernelSource(t, classDir, devDir, logs.logger())
	devs := awaitDevices(t, store, 5*time.Second, "two devices", func(m map[string]Device) bool { return len(m) == 2 })
	if id := devs["accel0"].ID; id != "habanalabs-0000-3b-00.0" {
		t.Errorf("accel0 (serial not UTF-8) has ID %q, want its PCI-derived ID habanalabs-0000-3b-00.0", id)
	}
	if id := devs["accel1"].ID; id != "AN-0043" {
		t.Errorf("accel1 has ID %q, want its serial AN-0043", id)
	}
	if !strings.Contains(logs.String(), "serial_number cannot be a device ID") || !strings.Contains(logs.String(), "accel0") {
		t.Errorf("no warning naming accel0's serial; logs:\n%s", logs.String())
	}
	snap, _ := store.Load()
	for _, res := range []*Resource{NewComputeResource("accel.io", store, testLogger(t)), NewMonitorResource("accel.io", 2, store, testLogger(t))} {
		if _, err := proto.Marshal(toAPI(res.units(snap))); err != nil {
			t.Errorf("%s: ListAndWatch response does not marshal: %v", res.Name, err)
		}
	}
	for _, d := range snap.Devices {
		for _, s := range []string{d.ID, d.Driver, d.Model, d.Reason} {
			if !utf8.ValidString(s) {
				t.Errorf("device %s carries invalid UTF-8 %q", d.Name, s)
			}
		}
	}
}

// Item 9: two devices with the same serial used to leave one of them out
// (kubelet saw 2 of 3). Both are advertised, as SERIAL-PCIADDRESS, whatever
// their accel numbering, with one warning naming both.
func TestDuplicateSerialsBothAdvertised(t *testing.T) {
	want := map[string]string{ // PCI address → ID
		"0000:3b:00.0": "DUP-1-0000-3b-00.0",
		"0000:5e:00.0": "DUP-1-0000-5e-00.0",
		"0000:86:00.0": "OTHER-2",
	}
	for _, order := range [][]kernelDev{
		{{"accel0", "0000:3b:00.0", "DUP-1"}, {"accel1", "0000:5e:00.0", "DUP-1"}, {"accel2", "0000:86:00.0", "OTHER-2"}},
		// After a reboot that numbered them the other way round.
		{{"accel0", "0000:86:00.0", "OTHER-2"}, {"accel1", "0000:5e:00.0", "DUP-1"}, {"accel2", "0000:3b:00.0", "DUP-1"}},
	} {
		classDir, devDir := kernelSysfs(t, order...)
		var logs logBuffer
		store := startKernelSource(t, classDir, devDir, logs.logger())
		snap := awaitSnapshot(t, store, 5*time.Second, "three devices", func(s *Snapshot) bool { return len(s.Devices) == 3 })
		for _, kd := range order {
			var got string
			for _, d := range snap.Devices {
				if d.Name == kd.name {
					got = d.ID
				}
			}
			if got != want[kd.pci] {
				t.Errorf("%s (%s) has ID %q, want %q", kd.name, kd.pci, got, want[kd.pci])
			}
		}
		var dups []string
		for _, kd := range order {
			if kd.serial == "DUP-1" {
				dups = append(dups, kd.name)
			}
		}
		line := ""
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "devices report the same serial") {
				line = l
			}
		}
		if !strings.Contains(line, dups[0]) || !strings.Contains(line, dups[1]) || !strings.Contains(line, "DUP-1") {
			t.Errorf("no warning naming %v and the serial; logs:\n%s", dups, logs.String())
		}
	}
}

// awaitSnapshot waits until cond holds for the store's snapshot.
func awaitSnapshot(t *testing.T, s *Store, d time.Duration, what string, cond func(*Snapshot) bool) *Snapshot {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		snap, changed := s.Load()
		if cond(snap) {
			return snap
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%s: not within %s; devices: %+v", what, d, snap.Devices)
		}
	}
}

// A serial once seen on two devices stays disambiguated: the device left
// when the other goes keeps the ID kubelet may have given to a pod.
func TestUniqueIDsStickyAndOrderIndependent(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	a := Device{ID: "S", Name: "ac0", addr: "0000-3b-00.0"}
	b := Device{ID: "S", Name: "ac1", addr: "0000-5e-00.0"}
	addr := func(d Device) string { return d.addr }
	dup := map[string]bool{}
	first := []Device{a, b}
	uniqueIDs(log, first, dup, addr)
	second := []Device{b, a}
	uniqueIDs(log, second, map[string]bool{}, addr)
	for i := range 2 {
		if first[i].ID != second[i].ID || first[i].Name != second[i].Name {
			t.Errorf("order changed the IDs: %+v vs %+v", first, second)
		}
	}
	if first[0].ID != "S-0000-3b-00.0" || first[1].ID != "S-0000-5e-00.0" {
		t.Errorf("IDs = %q, %q", first[0].ID, first[1].ID)
	}
	alone := []Device{first[0]} // b went away
	uniqueIDs(log, alone, dup, addr)
	if alone[0].ID != "S-0000-3b-00.0" {
		t.Errorf("after the twin left, ID = %q; want it kept", alone[0].ID)
	}
	// A rename that collides with another device's own ID gets the name too.
	c := Device{ID: "S-0000-3b-00.0", Name: "ac2"}
	all := []Device{first[0], first[1], c}
	uniqueIDs(log, all, dup, addr)
	ids := map[string]bool{}
	for _, d := range all {
		ids[d.ID] = true
	}
	if len(ids) != 3 {
		t.Errorf("IDs not unique: %+v", all)
	}
}
