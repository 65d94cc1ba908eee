package plugin

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// ctl applies a simulator control command to the in-memory daemon, with
// the same words and effects as fakedev's sys/control: "add [N]" plugs N
// devices at the lowest free indices with serials never used before,
// "remove acN" unplugs one, "fault acN STATUS" sets a status, "recover
// acN" and "reset acN" make it operational again. Each change emits the
// event the real daemon would.
func (d *memDaemon) ctl(t testing.TB, cmd string) string {
	t.Helper()
	f := strings.Fields(cmd)
	if len(f) == 0 {
		t.Fatalf("mem ctl: empty command")
	}
	index := func() int {
		if len(f) < 2 {
			t.Fatalf("mem ctl %q: no device named", cmd)
		}
		i, kind, ok := accel.ParseNodeName(f[1])
		if !ok || kind != accel.NodeCompute {
			t.Fatalf("mem ctl %q: %q is not a compute node name", cmd, f[1])
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.devs[i] == nil {
			t.Fatalf("mem ctl %q: no device %s", cmd, f[1])
		}
		return i
	}
	setStatus := func(i int, s accel.Status) {
		d.change(i, func(dev *memDev) { dev.info.Status = s }, accel.EventStatus)
	}
	switch f[0] {
	case "add":
		n := 1
		if len(f) > 1 {
			var err error
			if n, err = strconv.Atoi(f[1]); err != nil || n < 1 {
				t.Fatalf("mem ctl %q: bad count", cmd)
			}
		}
		d.mu.Lock()
		var names []string
		for range n {
			i := 0
			for d.devs[i] != nil {
				i++
			}
			serial := fmt.Sprintf("MEM-%04d", d.nextSerial)
			d.nextSerial++
			d.devs[i] = &memDev{compute: true, monitor: true, info: accel.Info{
				Name: accel.ComputeName(i), Index: uint32(i), Serial: serial,
				Driver: "memsim", Model: "mem-1", Status: accel.StatusOperational, NUMANode: int32(i % 2),
			}}
			d.emitLocked(accel.Event{Type: accel.EventAdded, Name: accel.ComputeName(i), Index: i, Serial: serial})
			names = append(names, accel.ComputeName(i))
		}
		d.mu.Unlock()
		return strings.Join(names, " ")
	case "remove":
		i := index()
		d.mu.Lock()
		dev := d.devs[i]
		delete(d.devs, i)
		d.emitLocked(accel.Event{Type: accel.EventRemoved, Name: accel.ComputeName(i), Index: i, Serial: dev.info.Serial, Status: accel.StatusRemoved})
		d.mu.Unlock()
	case "fault":
		i := index()
		if len(f) != 3 {
			t.Fatalf("mem ctl %q: want fault acN STATUS", cmd)
		}
		s, err := accel.ParseStatus(strings.ReplaceAll(f[2], "-", "_"))
		if err != nil {
			t.Fatalf("mem ctl %q: %v", cmd, err)
		}
		setStatus(i, s)
	case "recover", "reset":
		setStatus(index(), accel.StatusOperational)
	default:
		t.Fatalf("mem ctl %q: unknown command", cmd)
	}
	return "ok"
}

// startMemHarness is a plugin (the real New and Run, gRPC servers,
// registrar and metrics) over an in-memory device daemon with devices on
// numa NUMA nodes, registered with a stand-in kubelet: no root, no FUSE.
func startMemHarness(t testing.TB, devices, numa, slots int, adjust func(*Config)) *harness {
	t.Helper()
	d := newMemDaemon(devices)
	for i, dev := range d.devs {
		dev.info.NUMANode = int32(i % max(numa, 1))
	}
	h := &harness{mem: d, kubelet: newFakeKubelet(t, shortTempDir(t))}
	cfg := Config{
		DevDir: d.dir, HostDevDir: "/host/run/accel/dev", KubeletDir: h.kubelet.dir,
		ResourcePrefix: "accel.io", MonitorSlots: slots, Resync: 30 * time.Second,
		DaemonTimeout: DefaultDaemonTimeout, Logger: testLogger(t),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	h.plugin = newMemPlugin(t, cfg, d)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.plugin.Run(ctx) }()
	t.Cleanup(func() {
		d.thaw() // nothing may stay blocked
		h.stop(t)
	})
	return h
}

// newMemPlugin builds a plugin whose simulator source reads d instead of
// the file system; its view of d's directory receives new mounts, so a
// dead daemon is waited for, never a reason to exit.
func newMemPlugin(t testing.TB, cfg Config, d *memDaemon) *Plugin {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range p.sources {
		if sim, ok := s.(*SimSource); ok && sim.Dir == d.dir {
			sim.fs = d
			sim.view = func(dir string) (DirView, error) {
				return DirView{Dir: dir, MountPoint: dir, Propagation: "master:1"}, nil
			}
			return p
		}
	}
	t.Fatalf("plugin has no simulator source on %s", d.dir)
	return nil
}

// ctl sends a control command to whichever daemon the harness runs.
func (h *harness) ctl(t testing.TB, cmd string) string {
	t.Helper()
	if h.mem != nil {
		return h.mem.ctl(t, cmd)
	}
	return h.sim.ctl(t, cmd)
}

// daemonDir is the directory the harness's daemon serves.
func (h *harness) daemonDir() string {
	if h.mem != nil {
		return h.mem.dir
	}
	return h.sim.dir
}
