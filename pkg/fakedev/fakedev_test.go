package fakedev

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

func newSim(t *testing.T, n int, cfg Config) (*Sim, *accel.Registry) {
	t.Helper()
	reg := accel.NewRegistry(accel.Options{})
	t.Cleanup(reg.Close)
	if cfg.ResetDuration == 0 {
		cfg.ResetDuration = time.Millisecond
	}
	s := New(reg, cfg)
	for range n {
		if _, err := s.Add(); err != nil {
			t.Fatal(err)
		}
	}
	return s, reg
}

func TestIdentityDeterministic(t *testing.T) {
	_, a := newSim(t, 3, Config{Seed: "node-a", NUMANodes: 2})
	_, again := newSim(t, 3, Config{Seed: "node-a", NUMANodes: 2})
	_, other := newSim(t, 3, Config{Seed: "node-b"})
	seen := map[string]bool{}
	for i, d := range a.Devices() {
		id := d.Identity()
		if id.Serial != again.Devices()[i].Identity().Serial {
			t.Errorf("slot %d: serial differs between runs with the same seed", i)
		}
		if id.Serial == other.Devices()[i].Identity().Serial {
			t.Errorf("slot %d: same serial with a different seed", i)
		}
		if seen[id.Serial] {
			t.Errorf("duplicate serial %s", id.Serial)
		}
		seen[id.Serial] = true
		if id.NUMANode != i%2 || id.Driver != DriverName || id.MemoryTotal != 16<<30 || !strings.HasPrefix(id.Serial, "SIM-") {
			t.Errorf("slot %d identity %+v", i, id)
		}
	}
}

// A hot-plugged device is a new device: new slot, new serial, even when it
// reuses a freed index.
func TestHotPlugNeverReusesSerial(t *testing.T) {
	s, reg := newSim(t, 2, Config{})
	old := reg.Devices()[1].Identity().Serial
	if err := s.Remove("ac1"); err != nil {
		t.Fatal(err)
	}
	d, err := s.Add()
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "ac1" || d.Identity().Serial == old || d.Identity().Serial != Serial("accel-sim", 2) {
		t.Fatalf("re-plugged %s serial %s (old %s)", d.Name(), d.Identity().Serial, old)
	}
}

func TestMemoryCommands(t *testing.T) {
	page := accel.PageSize
	_, reg := newSim(t, 1, Config{MemoryTotal: 10 * page})
	d := reg.Devices()[0]
	f, err := d.Open(context.Background(), accel.NodeCompute, 1)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 16)
	if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(6*page-100), out); err != nil {
		t.Fatal(err)
	}
	h := DecodeMemAlloc(out)
	if got := d.Info().MemoryUsed; got != 6*page {
		t.Fatalf("memory used %d, want 6 pages (the size rounded up)", got)
	}
	for _, tc := range []struct {
		name string
		cmd  uint32
		in   []byte
		want syscall.Errno
	}{
		{"alloc beyond total", IoctlMemAlloc, EncodeMemAlloc(4*page + 1), syscall.ENOMEM},
		{"alloc of zero bytes", IoctlMemAlloc, EncodeMemAlloc(0), syscall.EINVAL},
		{"free of an unknown handle", IoctlMemFree, EncodeMemFree(h + 1), syscall.EINVAL},
		{"unknown driver command", accel.IOW(accel.DriverCommandBase+9, 8), make([]byte, 8), syscall.ENOTTY},
	} {
		if err := f.Ioctl(tc.cmd, tc.in, make([]byte, 16)); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := f.Ioctl(IoctlMemAlloc, EncodeMemAlloc(4*page), out); err != nil {
		t.Fatalf("alloc of exactly the rest: %v", err)
	}
	if err := f.Ioctl(IoctlMemFree, EncodeMemFree(h), nil); err != nil {
		t.Fatal(err)
	}
	f.Release()
	if got := d.Info().MemoryUsed; got != 0 {
		t.Fatalf("memory used after the client closed: %d, want 0", got)
	}
}

func TestControl(t *testing.T) {
	s, reg := newSim(t, 2, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		cmd, want string
		errno     syscall.Errno
	}{
		{"fault ac0", "ac0: malfunction", 0},
		{"recover ac0", "ac0: operational", 0},
		{"fault ac1 needs-reset", "ac1: needs-reset", 0},
		{"recover ac1", "", syscall.EINVAL},
		{"reset ac1", "ac1: operational after reset (reset_count 1)", 0},
		{"add 2", "added ac2 ac3", 0},
		{"remove ac3", "removed ac3", 0},
		{"remove ac3", "", syscall.ENODEV},
		{"fault ac9", "", syscall.ENODEV},
		{"fault ac0 melted", "", syscall.EINVAL},
		{"fault ac0 corrupt", "ac0: corrupt (every job's answer has a bit flipped; status stays operational)", 0},
		{"recover ac0", "ac0: operational", 0},
		{"add zero", "", syscall.EINVAL},
		{"reset", "", syscall.EINVAL},
		{"reset ac0 ac1", "", syscall.EINVAL},
		{"explode ac0", "", syscall.EINVAL},
		{"", "", syscall.EINVAL},
	} {
		got, err := s.Control(ctx, tc.cmd)
		if tc.errno != 0 {
			if !errors.Is(err, tc.errno) {
				t.Errorf("%q: got %q, %v; want errno %v", tc.cmd, got, err, tc.errno)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.cmd, got, err, tc.want)
		}
	}
	if n := len(reg.Devices()); n != 3 {
		t.Fatalf("%d devices after add 2 / remove 1, want 3", n)
	}
}

// A reset runs to completion even when the caller gives up, so a device is
// never left in_reset.
func TestResetSurvivesCancelledCaller(t *testing.T) {
	s, reg := newSim(t, 1, Config{ResetDuration: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Control(ctx, "reset ac0"); err != nil {
		t.Fatal(err)
	}
	if info := reg.Devices()[0].Info(); info.Status != accel.StatusOperational || info.ResetCount != 1 {
		t.Fatalf("after reset: %+v", info)
	}
}
