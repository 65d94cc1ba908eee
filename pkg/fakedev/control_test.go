package fakedev

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// allocated returns the bytes the process allocated while fn ran.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// snapshot describes every present device, to show that a failed command
// changed nothing.
func snapshot(reg *accel.Registry) []string {
	var out []string
	for _, d := range reg.Devices() {
		info := d.Info()
		out = append(out, fmt.Sprintf("%s/%s/%s/%d", info.Name, info.Serial, info.Status, info.ResetCount))
	}
	return out
}

// Issue 10 item 2: the count of add was used to size a slice before the
// 256-device limit was checked, so this line made the simulator run out of
// memory and die.
func TestControlAddHugeCountAllocatesNothing(t *testing.T) {
	s, reg := newSim(t, 2, Config{})
	before := snapshot(reg)
	for _, line := range []string{"add 10000000000000", "add 99999999999999999999999999999999", "add 257"} {
		var err error
		n := allocated(func() { _, err = s.Control(context.Background(), line) })
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "limit of 256 devices") {
			t.Errorf("%q: %v, want ENOSPC naming the limit of 256 devices", line, err)
		}
		if n > 64<<10 {
			t.Errorf("%q allocated %d bytes, want a few hundred at most", line, n)
		}
	}
	if got := snapshot(reg); !slices.Equal(got, before) {
		t.Errorf("devices after refused adds: %v, want %v", got, before)
	}
	allocs := testing.AllocsPerRun(10, func() { _, _ = s.Control(context.Background(), "add 10000000000000") })
	if allocs > 10 {
		t.Errorf("refusing add 10000000000000 takes %v allocations, want a handful for the error", allocs)
	}
}

// add is all or nothing: a count that does not fit in the free indices
// adds none (it used to add what fitted, then fail).
func TestControlAddAllOrNothing(t *testing.T) {
	s, reg := newSim(t, 250, Config{})
	ctx := context.Background()
	before := snapshot(reg)
	_, err := s.Control(ctx, "add 7")
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "only 6 of 256 device indices are free") {
		t.Fatalf("add 7 with 6 free: %v, want ENOSPC saying 6 of 256 are free", err)
	}
	if got := snapshot(reg); !slices.Equal(got, before) {
		t.Fatalf("add 7 with 6 free left %d devices, want the 250 before", len(got))
	}
	out, err := s.Control(ctx, "add 6")
	if err != nil || out != "added ac250 ac251 ac252 ac253 ac254 ac255" {
		t.Fatalf("add 6 with 6 free: %q, %v", out, err)
	}
	if _, err := s.Control(ctx, "add"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("add with none free: %v, want ENOSPC", err)
	}
}

// An index held by a removed device that still has an open file is found
// only when registering; the devices added before that are unplugged again.
func TestControlAddRollsBackOnHeldIndex(t *testing.T) {
	s, reg := newSim(t, 255, Config{})
	f, err := reg.Devices()[0].Open(context.Background(), accel.NodeCompute, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Release)
	if err := s.Remove("ac0"); err != nil {
		t.Fatal(err)
	}
	before := snapshot(reg)
	_, err = s.Control(context.Background(), "add 2")
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "none kept") {
		t.Fatalf("add 2 with one index free: %v, want ENOSPC saying none were kept", err)
	}
	if got := snapshot(reg); !slices.Equal(got, before) {
		t.Fatalf("devices after a refused add: %d, want the %d before", len(got), len(before))
	}
}

// Issue 10 item 10 and the review of the whole grammar: every command
// accepts only compute-node names of present devices, exactly its own
// arguments, lower-case words, and decimal counts without sign or leading
// zeros. A refused line changes nothing.
func TestControlGrammar(t *testing.T) {
	s, reg := newSim(t, 2, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		line  string
		errno syscall.Errno
		msg   string // part of the error message
	}{
		{"fault ac0_monitor", syscall.EINVAL, `"ac0_monitor" is a monitor node: name the device by its compute node, ac0`},
		{"remove ac1_monitor", syscall.EINVAL, "is a monitor node"},
		{"recover ac0_monitor", syscall.EINVAL, "is a monitor node"},
		{"reset ac0_monitor", syscall.EINVAL, "is a monitor node"},
		{"fault ac01", syscall.EINVAL, `"ac01" is not a device name (want acN, e.g. ac0)`},
		{"fault ac00", syscall.EINVAL, "is not a device name"},
		{"fault AC0", syscall.EINVAL, "is not a device name"},
		{"fault ac-1", syscall.EINVAL, "is not a device name"},
		{"fault ac+1", syscall.EINVAL, "is not a device name"},
		{"fault ac", syscall.EINVAL, "is not a device name"},
		{"fault ac0x", syscall.EINVAL, "is not a device name"},
		{"fault /dev/ac0", syscall.EINVAL, "is not a device name"},
		{"fault ac99999999999999999999", syscall.EINVAL, "is not a device name"},
		{"fault ac7", syscall.ENODEV, `no device named "ac7"`},
		{"fault ac256", syscall.ENODEV, `no device named "ac256"`},
		{"fault ac0 melted", syscall.EINVAL, `unknown fault "melted"`},
		{"fault ac0 MALFUNCTION", syscall.EINVAL, `unknown fault "MALFUNCTION"`},
		{"fault ac0 malfunction malfunction", syscall.EINVAL, "fault: too many arguments"},
		{"fault ac0 ac1", syscall.EINVAL, `unknown fault "ac1"`},
		{"remove ac0 ac0", syscall.EINVAL, "remove: too many arguments (usage: remove DEVICE)"},
		{"recover ac0 now", syscall.EINVAL, "too many arguments"},
		{"reset ac0 ac1", syscall.EINVAL, "too many arguments"},
		{"add 1 2", syscall.EINVAL, "add: too many arguments"},
		{"recover", syscall.EINVAL, "recover needs a device name, e.g. recover ac0"},
		{"fault", syscall.EINVAL, "fault needs a device name"},
		{"add 0", syscall.EINVAL, "COUNT must be a number from 1 to 256 without sign or leading zeros"},
		{"add -1", syscall.EINVAL, "COUNT must be a number from 1 to 256"},
		{"add +1", syscall.EINVAL, "COUNT must be a number"},
		{"add 01", syscall.EINVAL, "COUNT must be a number"},
		{"add 1x", syscall.EINVAL, `got "1x"`},
		{"add 1.5", syscall.EINVAL, "COUNT must be a number"},
		{"add 0x10", syscall.EINVAL, "COUNT must be a number"},
		{"add zero", syscall.EINVAL, "neither a COUNT"},
		{"add 300", syscall.ENOSPC, "exceeds the limit of 256 devices"},
		{"ADD", syscall.EINVAL, `unknown command "ADD"`},
		{"Fault ac0", syscall.EINVAL, `unknown command "Fault"`},
		{"explode ac0", syscall.EINVAL, `unknown command "explode" (want add, remove, fault, recover or reset)`},
		{"", syscall.EINVAL, "empty command"},
		{" \t ", syscall.EINVAL, "empty command"},
		{"\n", syscall.EINVAL, "empty command"},
		{"fault ac0\nremove ac1", syscall.EINVAL, "one command per line"},
		{"fault ac0\rremove ac1", syscall.EINVAL, "printable ASCII"},
		{"fault\x00ac0", syscall.EINVAL, "byte 0x00 at offset 5"},
		{"fault\u00a0ac0", syscall.EINVAL, "printable ASCII"},
		{"fault ac0\u200b", syscall.EINVAL, "printable ASCII"},
		{"\xff", syscall.EINVAL, "printable ASCII"},
		{"add " + strings.Repeat("9", MaxControlLine), syscall.EINVAL, "longer than the limit of 1024"},
		{"explode" + strings.Repeat("x", 200), syscall.EINVAL, `unknown command "explodexxxxxxxxxxxxxxxxxxxxxxxxx"...`},
	} {
		before := snapshot(reg)
		out, err := s.Control(ctx, tc.line)
		if !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: %q, %v; want %v saying %q", tc.line, out, err, tc.errno, tc.msg)
			continue
		}
		if msg := err.Error(); strings.ContainsAny(msg, "\n\r") || len(msg) > 200 {
			t.Errorf("%q: error %q is not one short line", tc.line, msg)
		}
		if got := snapshot(reg); !slices.Equal(got, before) {
			t.Errorf("%q failed but changed the devices: %v, was %v", tc.line, got, before)
		}
	}
}

// What the grammar tolerates: surrounding whitespace and a final newline,
// runs of spaces or tabs between words.
func TestControlWhitespace(t *testing.T) {
	s, reg := newSim(t, 1, Config{})
	ctx := context.Background()
	for _, tc := range []struct{ line, want string }{
		{"  fault\tac0   needs-reset \r\n", "ac0: needs-reset"},
		{"reset ac0\n", "ac0: operational after reset (reset_count 1)"},
		{"\tadd\t2\t", "added ac1 ac2"},
		{"add 256", ""}, // refused below: not all fit
	} {
		out, err := s.Control(ctx, tc.line)
		if tc.want == "" {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("%q: %q, %v; want ENOSPC", tc.line, out, err)
			}
			continue
		}
		if err != nil || out != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.line, out, err, tc.want)
		}
	}
	if n := len(reg.Devices()); n != 3 {
		t.Errorf("%d devices, want 3", n)
	}
}

// A malfunction does not lift a pending reset: injecting one used to
// replace needs_reset by malfunction, which recover then cleared without
// the reset.
func TestControlMalfunctionKeepsNeedsReset(t *testing.T) {
	s, reg := newSim(t, 1, Config{})
	ctx := context.Background()
	if _, err := s.Control(ctx, "fault ac0 needs-reset"); err != nil {
		t.Fatal(err)
	}
	out, err := s.Control(ctx, "fault ac0")
	if err != nil || !strings.HasPrefix(out, "ac0: needs-reset (unchanged") {
		t.Fatalf("fault ac0 on a device that needs a reset: %q, %v", out, err)
	}
	if _, err := s.Control(ctx, "recover ac0"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("recover after malfunction on needs-reset: %v, want EINVAL", err)
	}
	if st := reg.Devices()[0].Status(); st != accel.StatusNeedsReset {
		t.Fatalf("status %s, want needs_reset", st)
	}
}

// While a reset runs, fault, recover and a second reset are refused with
// EAGAIN; a fault used to be overwritten silently by the reset's end.
func TestControlDuringReset(t *testing.T) {
	s, reg := newSim(t, 1, Config{ResetDuration: time.Hour})
	sub := reg.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Reset(ctx, "ac0") }()
	t.Cleanup(func() { cancel(); <-done })
	for {
		ev, err := sub.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == accel.EventStatus && ev.Status == accel.StatusInReset {
			break
		}
	}
	for _, line := range []string{"fault ac0", "fault ac0 needs-reset", "recover ac0", "reset ac0"} {
		if _, err := s.Control(context.Background(), line); !errors.Is(err, syscall.EAGAIN) || !strings.Contains(err.Error(), "in progress") {
			t.Errorf("%q during a reset: %v, want EAGAIN saying a reset is in progress", line, err)
		}
	}
	if st := reg.Devices()[0].Status(); st != accel.StatusInReset {
		t.Errorf("status during the reset: %s", st)
	}
}

// BenchmarkControlRefusedHugeAdd shows what refusing the add that used to
// kill the simulator costs: a few small allocations for the error.
func BenchmarkControlRefusedHugeAdd(b *testing.B) {
	reg := accel.NewRegistry(accel.Options{})
	b.Cleanup(reg.Close)
	s := New(reg, Config{})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Control(context.Background(), "add 10000000000000"); !errors.Is(err, syscall.ENOSPC) {
			b.Fatal(err)
		}
	}
}
