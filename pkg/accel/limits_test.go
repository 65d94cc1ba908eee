package accel

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

// Regression (issue 10, item 7): one process may hold at most
// DefaultMonitorOpensPerProcess open files of one device's monitor node;
// the next open is EMFILE, other processes and other devices are not
// affected, and a release makes room again. On 12137fa every open succeeded.
func TestMonitorOpensPerProcessLimit(t *testing.T) {
	r := newTestRegistry(t, Options{})
	a, b := mustRegister(t, r, "A"), mustRegister(t, r, "B")
	open := func(d *Device, pid int32) (*File, error) { return d.Open(context.Background(), NodeMonitor, pid) }
	var files []*File
	for i := range DefaultMonitorOpensPerProcess {
		f, err := open(a, 7)
		if err != nil {
			t.Fatalf("monitor open %d of pid 7: %v", i+1, err)
		}
		files = append(files, f)
	}
	_, err := open(a, 7)
	wantErrno(t, "one monitor open past the per-process limit", err, syscall.EMFILE)
	if f, err := open(a, 8); err != nil {
		t.Fatalf("another process's open: %v", err)
	} else {
		f.Release()
	}
	if f, err := open(b, 7); err != nil {
		t.Fatalf("pid 7's open of another device: %v", err)
	} else {
		f.Release()
	}
	// The compute node is not a monitor file.
	c := mustOpen(t, a, NodeCompute)
	c.Release()
	files[0].Release()
	files[0].Release() // idempotent: frees one slot, not two
	f, err := open(a, 7)
	if err != nil {
		t.Fatalf("open after a release: %v", err)
	}
	_, err = open(a, 7)
	wantErrno(t, "open past the limit after one release", err, syscall.EMFILE)
	f.Release()
	for _, f := range files[1:] {
		f.Release()
	}
	if info := a.Info(); info.MonitorClients != 0 {
		t.Fatalf("%d monitor clients after every release, want 0", info.MonitorClients)
	}
}

func TestMonitorOpensPerDeviceLimit(t *testing.T) {
	var logs bytes.Buffer
	r := newTestRegistry(t, Options{MonitorOpensPerProcess: 3, MonitorOpensPerDevice: 10,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	d := mustRegister(t, r, "A")
	var files []*File
	for pid := int32(1); len(files) < 10; pid++ {
		for range 3 {
			if len(files) == 10 {
				break
			}
			f, err := d.Open(context.Background(), NodeMonitor, pid)
			if err != nil {
				t.Fatalf("open %d: %v", len(files)+1, err)
			}
			files = append(files, f)
		}
	}
	for range 5 {
		_, err := d.Open(context.Background(), NodeMonitor, 99)
		wantErrno(t, "a fresh process's open past the per-device limit", err, syscall.EMFILE)
	}
	if n := strings.Count(logs.String(), "monitor open refused"); n != 1 {
		t.Errorf("%d refusal log lines for 5 refusals of one process, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "pid=99") || !strings.Contains(logs.String(), "per-device limit") {
		t.Errorf("refusal log does not name the pid and the limit:\n%s", logs.String())
	}
	files[0].Release()
	f, err := d.Open(context.Background(), NodeMonitor, 99)
	if err != nil {
		t.Fatalf("open after a release: %v", err)
	}
	f.Release()
	for _, f := range files[1:] {
		f.Release()
	}
}

func TestMonitorLimitDefaults(t *testing.T) {
	for _, tc := range []struct {
		in           Options
		perProc, dev int
	}{
		{Options{}, DefaultMonitorOpensPerProcess, DefaultMonitorOpensPerDevice},
		{Options{MonitorOpensPerProcess: -1, MonitorOpensPerDevice: -1}, DefaultMonitorOpensPerProcess, DefaultMonitorOpensPerDevice},
		{Options{MonitorOpensPerProcess: 1, MonitorOpensPerDevice: 1}, 1, 1},
		{Options{MonitorOpensPerProcess: 1 << 30, MonitorOpensPerDevice: 1 << 30}, MaxMonitorOpensPerProcess, MaxMonitorOpensPerDevice},
	} {
		r := NewRegistry(tc.in)
		if r.opts.MonitorOpensPerProcess != tc.perProc || r.opts.MonitorOpensPerDevice != tc.dev {
			t.Errorf("options %+v: limits %d/%d, want %d/%d", tc.in, r.opts.MonitorOpensPerProcess, r.opts.MonitorOpensPerDevice, tc.perProc, tc.dev)
		}
	}
}
