package plugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Item 3: a device whose monitor node is missing is unhealthy with that
// reason (it cannot be read without opening its compute node, which the
// plugin never does); a device whose compute node is missing is unhealthy
// with that reason, never healthy with a host path that does not exist.
func TestSimSourceMissingNodes(t *testing.T) {
	d := newMemDaemon(4)
	m := startMemSource(t, d, time.Second, nil)
	awaitDevices(t, m.store, 5*time.Second, "four healthy devices", func(ds map[string]Device) bool {
		return len(ds) == 4 && ds["ac0"].Healthy && ds["ac1"].Healthy && ds["ac2"].Healthy && ds["ac3"].Healthy
	})
	d.change(1, func(dev *memDev) { dev.monitor = false }, accel.EventStatus)
	d.change(2, func(dev *memDev) { dev.compute = false }, accel.EventStatus)
	devs := awaitDevices(t, m.store, 2*time.Second, "ac1 and ac2 unhealthy", func(ds map[string]Device) bool {
		return len(ds) == 4 && !ds["ac1"].Healthy && !ds["ac2"].Healthy
	})
	if r := devs["ac1"].Reason; !strings.Contains(r, "ac1_monitor is missing") {
		t.Errorf("ac1 (no monitor) reason %q; want it to name the missing monitor node", r)
	}
	if r := devs["ac2"].Reason; !strings.Contains(r, "compute node ac2 is missing") {
		t.Errorf("ac2 (no compute node) reason %q; want it to name the missing compute node", r)
	}
	if !devs["ac0"].Healthy || !devs["ac3"].Healthy {
		t.Errorf("other devices affected: %+v", devs)
	}
	for _, p := range d.openedPaths() {
		if _, kind, _ := accel.ParseNodeName(filepath.Base(p)); kind != accel.NodeMonitor {
			t.Errorf("the plugin opened %s, not a monitor node", p)
		}
	}

	// A plugin restarted now still advertises what it can identify: ac2
	// through its monitor (unhealthy: no compute node). ac1 cannot be
	// identified without its monitor node and is not advertised.
	m2 := startMemSource(t, d, time.Second, nil)
	devs = awaitDevices(t, m2.store, 5*time.Second, "three devices after a restart", func(ds map[string]Device) bool { return len(ds) == 3 })
	if dev, ok := devs["ac2"]; !ok || dev.Healthy || dev.ID != "MEM-0002" {
		t.Errorf("ac2 after restart: %+v; want MEM-0002, unhealthy", dev)
	}
	if _, ok := devs["ac1"]; ok {
		t.Errorf("ac1 advertised without a monitor node: %+v", devs["ac1"])
	}
}

// Item 3: with sys/events deleted from a live mount, a restarted plugin
// used to advertise 0 devices. It advertises the devices it can identify,
// unhealthy, with the reason.
func TestSimSourceWithoutEventFile(t *testing.T) {
	d := newMemDaemon(2)
	d.events = false
	m := startMemSource(t, d, time.Second, nil)
	devs := awaitDevices(t, m.store, 5*time.Second, "two unhealthy devices", func(ds map[string]Device) bool {
		return len(ds) == 2 && !ds["ac0"].Healthy && !ds["ac1"].Healthy
	})
	if r := devs["ac0"].Reason; !strings.Contains(r, "no sys/events") {
		t.Errorf("reason %q; want it to say the event file is missing", r)
	}
	if why := m.src.notReady(); !strings.Contains(why, "no event file") {
		t.Errorf("notReady = %q; want the missing event file", why)
	}
}

// Item 3, against the real file system and on any code: the plugin never
// opens a compute node, not even for a device whose monitor node is
// missing. The nodes are FIFOs, so an open would be seen (and would block
// until the test opens the other end).
func TestSimSourceNeverOpensComputeNode(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sys"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sys/events", "ac0", "ac1", "ac1_monitor"} {
		if err := unix.Mkfifo(filepath.Join(dir, name), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	// Hold sys/events open (read-write never blocks) so the source can open
	// it and wait for events.
	events, err := os.OpenFile(filepath.Join(dir, "sys/events"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { events.Close() })
	store := NewStore(nil)
	src := &SimSource{Dir: dir, Resync: time.Hour, Store: store, Logger: testLogger(t)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		events.Close()
		// Unblock every open of a FIFO the source may be stuck in, until it
		// has stopped.
		for {
			for _, n := range []string{"ac0", "ac1", "ac1_monitor", "sys/events"} {
				if f, err := os.OpenFile(filepath.Join(dir, n), os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	// Tell the source about both devices, twice (an open of a FIFO with a
	// reader waiting succeeds for a non-blocking writer).
	for range 2 {
		if _, err := events.WriteString(`{"type":"status","name":"ac0","index":0}` + "\n" + `{"type":"status","name":"ac1","index":1}` + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) { // polls a FIFO for a reader: there is no event for "someone opened it"
		for _, n := range []string{"ac0", "ac1"} {
			if f, err := os.OpenFile(filepath.Join(dir, n), os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				f.Close()
				t.Fatalf("the plugin opened compute node %s", n)
			} else if !errors.Is(err, syscall.ENXIO) {
				t.Fatalf("probe %s: %v", n, err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Item 4: a frozen daemon (every call blocks, as after SIGSTOP) is seen
// within two daemon timeouts: every device unhealthy with "device daemon
// not responding", the source not ready; while frozen, no new call
// reaches the daemon however often it is asked (scrapes included); after a
// thaw everything is healthy again without a restart.
func TestSimSourceFrozenDaemon(t *testing.T) {
	const timeout = 200 * time.Millisecond
	d := newMemDaemon(3)
	m := startMemSource(t, d, timeout, nil)
	awaitDevices(t, m.store, 5*time.Second, "three healthy devices", func(ds map[string]Device) bool {
		return len(ds) == 3 && ds["ac0"].Healthy && ds["ac1"].Healthy && ds["ac2"].Healthy
	})
	frozenAt := time.Now()
	d.freeze()
	devs := awaitDevices(t, m.store, 2*timeout+time.Second, "every device unhealthy", func(ds map[string]Device) bool {
		return !ds["ac0"].Healthy && !ds["ac1"].Healthy && !ds["ac2"].Healthy
	})
	t.Logf("frozen → every device unhealthy in %s (daemon timeout %s)", time.Since(frozenAt), timeout)
	for _, dev := range devs {
		if !strings.Contains(dev.Reason, "device daemon not responding") {
			t.Errorf("%s reason %q; want \"device daemon not responding\"", dev.Name, dev.Reason)
		}
	}
	if why := m.src.notReady(); !strings.Contains(why, "not responding") || !strings.Contains(why, d.dir) {
		t.Errorf("notReady = %q; want the daemon named as not responding", why)
	}

	// Asking again and again starts no new call in the frozen daemon.
	blocked := d.blocked.Load()
	goroutines := runtime.NumGoroutine()
	metrics := NewMetrics(m.store, timeout)
	metrics.devices.sources[simSourceName(d.dir)] = m.src
	for range 20 {
		start := time.Now()
		mfs, err := metrics.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		// Without the gate a scrape blocks for as long as the daemon is
		// frozen; the slack only absorbs a loaded machine (Gather also runs
		// the Go and process collectors).
		if el := time.Since(start); el > timeout+3*time.Second {
			t.Errorf("scrape took %s with the daemon frozen; want it bounded by the daemon timeout %s", el, timeout)
		}
		if v := gaugeValue(mfs, "accel_device_info_readable", "ac0"); v != 0 {
			t.Errorf("accel_device_info_readable{device=ac0} = %v with the daemon frozen, want 0", v)
		}
	}
	if got := d.blocked.Load(); got > blocked+1 || got > maxOutstanding+1 {
		t.Errorf("calls blocked in the frozen daemon: %d before 20 scrapes, %d after; want no growth", blocked, got)
	}
	if g := runtime.NumGoroutine(); g > goroutines+2 {
		t.Errorf("goroutines: %d before 20 scrapes, %d after", goroutines, g)
	}

	thawedAt := time.Now()
	d.thaw()
	awaitDevices(t, m.store, 2*time.Second, "every device healthy after the thaw", func(ds map[string]Device) bool {
		return len(ds) == 3 && ds["ac0"].Healthy && ds["ac1"].Healthy && ds["ac2"].Healthy
	})
	t.Logf("thawed → every device healthy in %s", time.Since(thawedAt))
	if why := m.src.notReady(); why != "" {
		t.Errorf("notReady after the thaw = %q", why)
	}
}

type dtoMetricFamily = dto.MetricFamily

// gaugeValue is the value of the series name{device=device} (-1: absent).
func gaugeValue(mfs []*dtoMetricFamily, name, device string) float64 {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "device" && l.GetValue() == device {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// Item 4: a dead daemon (ENOTCONN) makes the source not ready, naming it.
func TestSimSourceDeadDaemon(t *testing.T) {
	d := newMemDaemon(2)
	m := startMemSource(t, d, time.Second, nil)
	awaitDevices(t, m.store, 5*time.Second, "two healthy devices", func(ds map[string]Device) bool {
		return len(ds) == 2 && ds["ac0"].Healthy && ds["ac1"].Healthy
	})
	d.kill()
	devs := awaitDevices(t, m.store, 2*time.Second, "every device unhealthy", func(ds map[string]Device) bool {
		return !ds["ac0"].Healthy && !ds["ac1"].Healthy
	})
	if r := devs["ac0"].Reason; !strings.Contains(r, "device daemon unreachable") {
		t.Errorf("reason %q", r)
	}
	if why := m.src.notReady(); !strings.Contains(why, "is dead") || !strings.Contains(why, "ENOTCONN") || !strings.Contains(why, d.dir) {
		t.Errorf("notReady = %q; want the daemon named as dead (ENOTCONN)", why)
	}
}

// The stale-view exit: a dead daemon whose directory this process sees
// through a mount without propagation makes Run fail after the grace,
// saying that the container must restart; with propagation it waits.
func TestSimSourceStaleViewExit(t *testing.T) {
	private := func(dir string) (DirView, error) { return DirView{Dir: dir, MountPoint: "/run/accel"}, nil }
	slave := func(dir string) (DirView, error) {
		return DirView{Dir: dir, MountPoint: "/run/accel", Propagation: "master:7"}, nil
	}
	t.Run("no propagation: exit", func(t *testing.T) {
		d := newMemDaemon(1)
		m := startMemSource(t, d, time.Second, func(s *SimSource) { s.StaleGrace, s.view = 300*time.Millisecond, private })
		awaitDevices(t, m.store, 5*time.Second, "one device", func(ds map[string]Device) bool { return ds["ac0"].Healthy })
		killed := time.Now()
		d.kill()
		select {
		case err := <-m.done:
			var stale *StaleViewError
			if !errors.As(err, &stale) || !strings.Contains(err.Error(), "the container must restart to see it") {
				t.Fatalf("Run = %v; want a StaleViewError saying the container must restart", err)
			}
			if el := time.Since(killed); el < 300*time.Millisecond {
				t.Errorf("exited %s after the daemon died, before the grace", el)
			}
			m.done <- nil // for the cleanup
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not exit with the daemon dead and no propagation")
		}
	})
	t.Run("propagation: wait", func(t *testing.T) {
		d := newMemDaemon(1)
		var logs logBuffer
		m := startMemSource(t, d, time.Second, func(s *SimSource) {
			s.StaleGrace, s.view, s.Logger = 300*time.Millisecond, slave, logs.logger()
		})
		awaitDevices(t, m.store, 5*time.Second, "one device", func(ds map[string]Device) bool { return ds["ac0"].Healthy })
		d.kill()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(logs.String(), "receives new mounts, so waiting") { // the log line is the event
			select {
			case err := <-m.done:
				t.Fatalf("Run returned %v with propagation", err)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no 'waiting' log; logs:\n%s", logs.String())
			}
		}
		d.revive()
		awaitDevices(t, m.store, 10*time.Second, "healthy again", func(ds map[string]Device) bool { return ds["ac0"].Healthy })
	})
}

// Item 8 on the daemon side: a serial that is not UTF-8 gets a stable
// hashed ID; the other devices are not affected.
func TestSimSourceBadSerial(t *testing.T) {
	d := newMemDaemon(2)
	d.devs[0].info.Serial = "MEM\xff0"
	d.devs[0].info.Model = "m\x00odel"
	m := startMemSource(t, d, time.Second, nil)
	devs := awaitDevices(t, m.store, 5*time.Second, "two devices", func(ds map[string]Device) bool { return len(ds) == 2 })
	if id := devs["ac0"].ID; id != hashedID("MEM\xff0") || !devs["ac0"].Healthy {
		t.Errorf("ac0 = %+v; want healthy with ID %s", devs["ac0"], hashedID("MEM\xff0"))
	}
	if devs["ac0"].Model != "m?odel" {
		t.Errorf("model %q not cleaned", devs["ac0"].Model)
	}
	if devs["ac1"].ID != "MEM-0001" {
		t.Errorf("ac1 = %+v", devs["ac1"])
	}
	snap, _ := m.store.Load()
	metrics := NewMetrics(m.store, time.Second)
	metrics.devices.sources[simSourceName(d.dir)] = m.src
	if v := gaugeValue(mustGather(t, metrics.Registry), "accel_device_info_readable", "ac0"); v != 1 {
		t.Errorf("ac0 readable = %v, want 1 (%+v)", v, snap.Devices)
	}
}

func mustGather(t *testing.T, r *prometheus.Registry) []*dtoMetricFamily {
	t.Helper()
	mfs, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}
